package org.cooperllm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.zip.CRC32;

/**
 * The wire's tensor frames (cooperllm.protocol.decode_tensor_frame): a DTC frame, or the plain "CLTF" float32 frame
 * the server sends when it wants lossless bytes. The decoder recognises both, like the Python device client.
 */
public final class TensorFrames {
    private TensorFrames() {}

    public static Dtc.Tensor decode(byte[] frame, long maxElements) {
        if (frame.length >= 4 && frame[0] == 'C' && frame[1] == 'L' && frame[2] == 'T' && frame[3] == 'F') {
            return decodePlain(frame, maxElements);
        }
        Dtc.Tensor t = Dtc.decode(frame, maxElements);
        for (float v : t.values) if (!Float.isFinite(v)) throw new Dtc.DtcException("frame contains NaN or Inf");
        return t;
    }

    /** magic 'CLTF', version 1, dtype 1, ndim, 0, ndim × u32 dims, crc32(payload), payload (LE float32). */
    public static Dtc.Tensor decodePlain(byte[] f, long maxElements) {
        if (f.length < 8) throw new Dtc.DtcException("frame shorter than its header");
        if ((f[4] & 0xff) != 1) throw new Dtc.DtcException("unsupported plain frame version " + (f[4] & 0xff));
        if ((f[5] & 0xff) != 1) throw new Dtc.DtcException("unsupported frame dtype code " + (f[5] & 0xff));
        int ndim = f[6] & 0xff;
        if (ndim > 8) throw new Dtc.DtcException("frame declares " + ndim + " dimensions (max 8)");
        int off = 8;
        if (f.length < off + 4 * ndim + 4) throw new Dtc.DtcException("frame truncated in its shape");
        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        long[] shape = new long[ndim];
        long n = 1;
        for (int i = 0; i < ndim; i++) {
            shape[i] = b.getInt(off + 4 * i) & 0xffffffffL;
            n *= shape[i];
            if (n > maxElements) throw new Dtc.DtcException("frame holds more than the allowed " + maxElements + " elements");
        }
        off += 4 * ndim;
        int crc = b.getInt(off);
        off += 4;
        if (f.length - off != 4 * n) throw new Dtc.DtcException("frame payload is " + (f.length - off) + " bytes, shape needs " + 4 * n);
        CRC32 c = new CRC32();
        c.update(f, off, f.length - off);
        if ((int) c.getValue() != crc) throw new Dtc.DtcException("frame checksum mismatch");
        float[] v = Floats.fromLittleEndian(f, off, (int) n);
        for (float x : v) if (!Float.isFinite(x)) throw new Dtc.DtcException("frame contains NaN or Inf");
        return new Dtc.Tensor(shape, v);
    }
}
