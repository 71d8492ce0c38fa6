package org.cooperllm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32;

/**
 * DTC frames (cooperllm/dtc/): tensor frames are decoded to the same binary32 values as the Python decoder, bit for
 * bit (one float32 multiply per value); report batches are encoded (uncompressed) and decoded. Every header field is
 * validated before anything is allocated from it, so a hostile frame fails with {@link DtcException}.
 */
public final class Dtc {
    public static final int VERSION = 1;
    public static final int KIND_TENSOR = 1;
    public static final int KIND_REPORTS = 2;
    static final int FLAG_STOCHASTIC = 0x01;
    static final int FLAG_ZSTD = 0x02;
    static final int MAX_BLOCK_SIZE = 1 << 20;
    static final int MAX_NDIM = 8;
    public static final long DEFAULT_MAX_ELEMENTS = 1L << 27;
    private static final byte[] MAGIC = {'C', 'D', 'T', 'C'};
    private static final int TENSOR_FIXED = 16;
    private static final int REPORTS_HEADER = 24;

    private Dtc() {}

    /** A frame that cannot be decoded or encoded; the message names the field. */
    public static final class DtcException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public DtcException(String msg) {
            super(msg);
        }
    }

    /** A decoded tensor: shape and row-major binary32 values. */
    public static final class Tensor {
        public final long[] shape;
        public final float[] values;

        public Tensor(long[] shape, float[] values) {
            this.shape = shape;
            this.values = values;
        }
    }

    public static boolean isDtcFrame(byte[] frame) {
        return frame.length >= 4 && frame[0] == MAGIC[0] && frame[1] == MAGIC[1] && frame[2] == MAGIC[2] && frame[3] == MAGIC[3];
    }

    private static void checkPrefix(byte[] f, int kind) {
        if (f.length < 6) throw new DtcException("truncated frame: " + f.length + " bytes");
        if (!isDtcFrame(f)) throw new DtcException("not a DTC frame (bad magic)");
        if ((f[4] & 0xff) != VERSION) throw new DtcException("unsupported DTC version " + (f[4] & 0xff));
        if ((f[5] & 0xff) != kind) throw new DtcException("frame holds kind " + (f[5] & 0xff) + ", expected " + kind);
    }

    private static int crc(byte[] f, int headLen, int payloadOff) {
        CRC32 c = new CRC32();
        c.update(f, 0, headLen);
        c.update(f, payloadOff, f.length - payloadOff);
        return (int) c.getValue();
    }

    private static byte[] inflate(byte[] f, int payloadOff, int bodyLen, boolean zstd) {
        byte[] payload = java.util.Arrays.copyOfRange(f, payloadOff, f.length);
        if (!zstd) return payload;
        long declared;
        try {
            declared = Zstd.frameContentSize(payload);
        } catch (Zstd.ZstdException e) {
            throw new DtcException("payload is not a zstd frame: " + e.getMessage());
        }
        if (declared != bodyLen) throw new DtcException("zstd frame declares " + declared + " bytes, the header says " + bodyLen);
        try {
            return Zstd.decompress(payload, bodyLen);
        } catch (Zstd.ZstdException e) {
            throw new DtcException("corrupt zstd payload: " + e.getMessage());
        }
    }

    public static Tensor decode(byte[] f) {
        return decode(f, DEFAULT_MAX_ELEMENTS);
    }

    /** Decodes a tensor frame; the element count may not exceed maxElements. */
    public static Tensor decode(byte[] f, long maxElements) {
        checkPrefix(f, KIND_TENSOR);
        if (f.length < TENSOR_FIXED) throw new DtcException("truncated frame: the fixed header needs " + TENSOR_FIXED + " bytes");
        ByteBuffer h = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        int dtype = f[6] & 0xff;
        int flags = f[7] & 0xff;
        int ndim = f[8] & 0xff;
        int scaleFormat = f[9] & 0xff;
        int reserved = h.getShort(10) & 0xffff;
        long blockSizeL = h.getInt(12) & 0xffffffffL;
        if (dtype != 1) throw new DtcException("unsupported dtype code " + dtype + " (only 1 = float32)");
        if ((flags & ~(FLAG_STOCHASTIC | FLAG_ZSTD)) != 0) throw new DtcException("unknown flag bits 0x" + Integer.toHexString(flags));
        if (ndim > MAX_NDIM) throw new DtcException("frame declares " + ndim + " dimensions, at most " + MAX_NDIM);
        if (scaleFormat != 1) throw new DtcException("unsupported scale format " + scaleFormat);
        if (reserved != 0) throw new DtcException("reserved header field is not zero");
        if (blockSizeL < 8 || blockSizeL > MAX_BLOCK_SIZE || blockSizeL % 8 != 0) throw new DtcException("invalid block size " + blockSizeL);
        int blockSize = (int) blockSizeL;
        int headerLen = TENSOR_FIXED + 8 * ndim + 12;
        if (f.length < headerLen) throw new DtcException("truncated frame: the header needs " + headerLen + " bytes");
        long[] shape = new long[ndim];
        boolean empty = false;
        for (int i = 0; i < ndim; i++) {
            shape[i] = h.getLong(TENSOR_FIXED + 8 * i);
            if (shape[i] == 0) empty = true;
        }
        long n = 1;
        if (empty) {
            n = 0;
        } else {
            for (long d : shape) {
                if (d < 0 || n > maxElements / d) throw new DtcException("frame declares more than " + maxElements + " elements");
                n *= d;
            }
        }
        if (n > maxElements) throw new DtcException("frame declares " + n + " elements, over the limit of " + maxElements);
        long bodyLen = h.getInt(headerLen - 12) & 0xffffffffL;
        long payloadLen = h.getInt(headerLen - 8) & 0xffffffffL;
        int crc = h.getInt(headerLen - 4);
        if (f.length != headerLen + payloadLen) {
            throw new DtcException("frame is " + f.length + " bytes, its header says " + (headerLen + payloadLen)
                    + (f.length < headerLen + payloadLen ? " (truncated)" : " (trailing bytes)"));
        }
        if (crc(f, headerLen - 4, headerLen) != crc) throw new DtcException("checksum mismatch: the frame is corrupted");
        long nChunks = (n + blockSize - 1) / blockSize;
        long maxBody = 5 * nChunks + 4 * n;
        long minBody = 5 * nChunks + (n / blockSize) * blockSize / 4 + ((n % blockSize) * 2 + 7) / 8;
        if (bodyLen < minBody || bodyLen > maxBody) {
            throw new DtcException("body length " + bodyLen + " is impossible for " + n + " values in " + nChunks + " chunks");
        }
        byte[] body = inflate(f, headerLen, (int) bodyLen, (flags & FLAG_ZSTD) != 0);
        if (body.length != bodyLen) throw new DtcException("body is " + body.length + " bytes, the header says " + bodyLen);
        return new Tensor(shape, decodeBody(body, (int) n, (int) nChunks, blockSize));
    }

    private static float[] decodeBody(byte[] body, int n, int nChunks, int blockSize) {
        ByteBuffer b = ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN);
        int[] bits = new int[nChunks];
        float[] scales = new float[nChunks];
        long dataLen = 0;
        for (int c = 0; c < nChunks; c++) {
            bits[c] = body[c] & 0xff;
            int bw = bits[c];
            if (bw != 2 && bw != 3 && bw != 4 && bw != 6 && bw != 8 && bw != 16 && bw != 32) {
                throw new DtcException("chunk " + c + " has invalid bit width " + bw);
            }
            scales[c] = b.getFloat(nChunks + 4 * c);
            if (!Float.isFinite(scales[c]) || scales[c] < 0) throw new DtcException("frame has a negative, NaN or Inf chunk scale");
            if (bw == 32 && scales[c] != 0) throw new DtcException("frame has a nonzero scale on a raw float32 chunk");
            // |q| <= 2^(bw-1) - 1: a scale whose product with it overflows float32 is no encoder's and decodes to inf
            if (bw != 32 && (double) scales[c] * ((1L << (bw - 1)) - 1) > Float.MAX_VALUE) {
                throw new DtcException("frame has a " + bw + "-bit chunk whose scale overflows float32");
            }
            int count = c == nChunks - 1 ? n - (nChunks - 1) * blockSize : blockSize;
            dataLen += ((long) count * bw + 7) / 8;
        }
        int dataOff = 5 * nChunks;
        if (dataOff + dataLen != body.length) {
            throw new DtcException("frame body has " + (body.length - dataOff) + " data bytes, its bit table needs " + dataLen);
        }
        float[] out = new float[n];
        int off = dataOff;
        for (int c = 0; c < nChunks; c++) {
            int count = c == nChunks - 1 ? n - (nChunks - 1) * blockSize : blockSize;
            int bw = bits[c];
            int len = (int) (((long) count * bw + 7) / 8);
            int base = c * blockSize;
            if (bw == 32) {
                for (int i = 0; i < count; i++) {
                    float v = b.getFloat(off + 4 * i);
                    if (!Float.isFinite(v)) throw new DtcException("frame has a NaN or Inf raw float32 value");
                    out[base + i] = v;
                }
            } else {
                long allOnes = (1L << bw) - 1;
                float s = scales[c];
                for (int i = 0; i < count; i++) {
                    long u = codeAt(body, off, (long) i * bw, bw);
                    if (u == allOnes) throw new DtcException("frame has an out-of-range " + bw + "-bit code");
                    long q = (u >>> 1) ^ -(u & 1);
                    out[base + i] = (float) q * s;
                }
                long usedBits = (long) count * bw;
                if (usedBits < 8L * len) {
                    int lastByte = body[off + len - 1] & 0xff;
                    if ((lastByte >>> (usedBits & 7)) != 0) throw new DtcException("frame has nonzero padding bits after the last value");
                }
            }
            off += len;
        }
        return out;
    }

    private static long codeAt(byte[] data, int off, long bitPos, int bw) {
        int first = off + (int) (bitPos >>> 3);
        int last = off + (int) ((bitPos + bw - 1) >>> 3);
        long v = 0;
        for (int i = last; i >= first; i--) v = (v << 8) | (data[i] & 0xff);
        return (v >>> (bitPos & 7)) & ((1L << bw) - 1);
    }

    // --- report batches --------------------------------------------------------------------------------------------

    private static void putVarint(java.io.ByteArrayOutputStream o, long v) {
        while (Long.compareUnsigned(v, 0x80) >= 0) {
            o.write((int) ((v & 0x7F) | 0x80));
            v >>>= 7;
        }
        o.write((int) v);
    }

    private static long zz(long v) {
        return (v << 1) ^ (v >> 63);
    }

    /** Encodes reports as one batch frame with float32 (scalarBits 32) or float64 scalars; order is kept. */
    public static byte[] encodeReports(List<Report> reports, int scalarBits) {
        if (scalarBits != 32 && scalarBits != 64) throw new DtcException("scalarBits must be 32 or 64");
        java.io.ByteArrayOutputStream body = new java.io.ByteArrayOutputStream();
        for (int field = 0; field < 4; field++) {
            long prev = 0;
            for (Report r : reports) {
                long v = field == 0 ? r.seed : field == 1 ? r.block : field == 2 ? r.step : r.nExamples;
                putVarint(body, zz(v - prev));
                prev = v;
            }
        }
        int width = scalarBits / 8;
        int count = reports.size();
        byte[] planes = new byte[width * count];
        for (int i = 0; i < count; i++) {
            double p = reports.get(i).scalar;
            long bitsV;
            if (width == 4) {
                float pf = (float) p;
                if (!Float.isFinite(pf)) throw new DtcException("report scalars must be finite as float32");
                bitsV = Float.floatToRawIntBits(pf) & 0xffffffffL;
            } else {
                bitsV = Double.doubleToRawLongBits(p);
            }
            for (int k = 0; k < width; k++) planes[k * count + i] = (byte) (bitsV >>> (8 * k));
        }
        body.write(planes, 0, planes.length);
        byte[] bodyBytes = body.toByteArray();
        ByteBuffer out = ByteBuffer.allocate(REPORTS_HEADER + bodyBytes.length).order(ByteOrder.LITTLE_ENDIAN);
        out.put(MAGIC).put((byte) VERSION).put((byte) KIND_REPORTS).put((byte) (width == 4 ? 1 : 2)).put((byte) 0);
        out.putInt(count).putInt(bodyBytes.length).putInt(bodyBytes.length);
        out.putInt(0);
        out.put(bodyBytes);
        byte[] f = out.array();
        ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN).putInt(REPORTS_HEADER - 4, crc(f, REPORTS_HEADER - 4, REPORTS_HEADER));
        return f;
    }

    /** Decodes a report batch (either scalar width, compressed or not) with every field range-checked. */
    public static List<Report> decodeReports(byte[] f, int maxReports) {
        checkPrefix(f, KIND_REPORTS);
        if (f.length < REPORTS_HEADER) throw new DtcException("truncated report batch");
        ByteBuffer h = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        int fmt = f[6] & 0xff;
        int flags = f[7] & 0xff;
        long count = h.getInt(8) & 0xffffffffL;
        long bodyLen = h.getInt(12) & 0xffffffffL;
        long payloadLen = h.getInt(16) & 0xffffffffL;
        int crc = h.getInt(20);
        if (fmt != 1 && fmt != 2) throw new DtcException("unsupported scalar format " + fmt);
        if ((flags & ~FLAG_ZSTD) != 0) throw new DtcException("unknown flag bits 0x" + Integer.toHexString(flags));
        if (count > maxReports) throw new DtcException("batch declares " + count + " reports, over the limit of " + maxReports);
        int width = fmt == 1 ? 4 : 8;
        if (bodyLen < count * (4 + width) || bodyLen > count * (40 + width)) throw new DtcException("impossible body length " + bodyLen);
        if (f.length != REPORTS_HEADER + payloadLen) throw new DtcException("report batch length does not match its header");
        if (crc(f, REPORTS_HEADER - 4, REPORTS_HEADER) != crc) throw new DtcException("checksum mismatch: the report batch is corrupted");
        byte[] body = inflate(f, REPORTS_HEADER, (int) bodyLen, (flags & FLAG_ZSTD) != 0);
        if (body.length != bodyLen) throw new DtcException("body length does not match its header");
        int n = (int) count;
        long[][] cols = new long[4][n];
        int[] pos = {0};
        for (int field = 0; field < 4; field++) {
            long prev = 0;
            for (int i = 0; i < n; i++) {
                long u = readVarint(body, pos);
                try {
                    prev = Math.addExact(prev, (u >>> 1) ^ -(u & 1));
                } catch (ArithmeticException e) {
                    throw new DtcException("report batch field out of range");
                }
                cols[field][i] = prev;
            }
        }
        if (body.length - pos[0] != (long) n * width) throw new DtcException("report batch has the wrong number of scalar bytes");
        List<Report> out = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            long bitsV = 0;
            for (int k = 0; k < width; k++) bitsV |= (body[pos[0] + k * n + i] & 0xffL) << (8 * k);
            double p = width == 4 ? Float.intBitsToFloat((int) bitsV) : Double.longBitsToDouble(bitsV);
            if (!Double.isFinite(p)) throw new DtcException("report batch has a NaN or Inf scalar");
            long seed = cols[0][i], block = cols[1][i], step = cols[2][i], nEx = cols[3][i];
            if (seed < 0) throw new DtcException("report seed outside [0, 2^63-1]");
            if (block < -1 || block > Integer.MAX_VALUE) throw new DtcException("report block " + block + " out of range");
            if (step < 0 || step > Integer.MAX_VALUE) throw new DtcException("report step " + step + " out of range");
            if (nEx < 1 || nEx > Integer.MAX_VALUE) throw new DtcException("report n_examples " + nEx + " out of range");
            out.add(new Report(seed, (int) block, (int) step, p, (int) nEx));
        }
        return out;
    }

    private static long readVarint(byte[] b, int[] pos) {
        long v = 0;
        int shift = 0;
        while (true) {
            if (pos[0] >= b.length) throw new DtcException("truncated report batch: a varint runs past the end");
            int by = b[pos[0]++] & 0xff;
            if (shift == 63 && (by & 0x7E) != 0) throw new DtcException("report batch has a varint above 2^64 - 1");
            v |= (long) (by & 0x7F) << shift;
            if ((by & 0x80) == 0) return v;
            shift += 7;
            if (shift > 63) throw new DtcException("report batch has a varint longer than 10 bytes");
        }
    }
}
