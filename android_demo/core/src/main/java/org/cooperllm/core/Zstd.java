package org.cooperllm.core;

/**
 * A pure-Java Zstandard decompressor (RFC 8878) for single frames without dictionaries: what DTC payloads need on a
 * phone with no native zstd. Written from the RFC; every length, table and offset is validated, output is capped at
 * the size the caller expects, and malformed input raises {@link ZstdException} rather than looping or overrunning.
 */
public final class Zstd {
    private static final int MAGIC = 0xFD2FB528;
    private static final int MAX_BLOCK = 128 * 1024;

    /** Malformed or unsupported zstd input. */
    public static final class ZstdException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public ZstdException(String msg) {
            super("zstd: " + msg);
        }
    }

    private static final short[] LL_DEFAULT = {4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2,
        3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1};
    private static final short[] OF_DEFAULT = {1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        -1, -1, -1, -1, -1};
    private static final short[] ML_DEFAULT = {1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1};
    private static final int[] LL_BASE = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 28,
        32, 40, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536};
    private static final int[] LL_BITS = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6,
        7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    private static final int[] ML_BASE = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
        24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027,
        2051, 4099, 8195, 16387, 32771, 65539};
    private static final int[] ML_BITS = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

    private Zstd() {}

    /** Content size declared in the frame header, or −1 when the frame does not declare it. */
    public static long frameContentSize(byte[] src) {
        return new Frame(src, 0, src.length, Integer.MAX_VALUE).contentSize;
    }

    /** Decompresses exactly one frame filling src; the output may not exceed maxOutput bytes. */
    public static byte[] decompress(byte[] src, int maxOutput) {
        Frame f = new Frame(src, 0, src.length, maxOutput);
        return f.run();
    }

    // --- bit readers --------------------------------------------------------------------------------------------------

    private static long bitsLE(byte[] b, int start, int end, long pos, int n) {
        if (n == 0) return 0;
        long v = 0;
        int first = (int) (pos >>> 3);
        int last = (int) ((pos + n - 1) >>> 3);
        for (int i = last; i >= first; i--) {
            int idx = start + i;
            v = (v << 8) | (idx < end ? (b[idx] & 0xff) : 0);
        }
        v >>>= (pos & 7);
        return n >= 64 ? v : v & ((1L << n) - 1);
    }

    /** Backward bitstream: starts after the final-bit flag of the last byte, reads toward the first byte. */
    private static final class Backward {
        final byte[] b;
        final int start;
        final int end;
        long remaining;

        Backward(byte[] b, int start, int len) {
            if (len <= 0) throw new ZstdException("empty bitstream");
            int lastByte = b[start + len - 1] & 0xff;
            if (lastByte == 0) throw new ZstdException("bitstream's last byte has no final-bit flag");
            this.b = b;
            this.start = start;
            this.end = start + len;
            this.remaining = 8L * (len - 1) + (31 - Integer.numberOfLeadingZeros(lastByte));
        }

        long peek(int n) {
            long p = remaining - n;
            if (p >= 0) return bitsLE(b, start, end, p, n);
            int avail = (int) Math.max(0, remaining);
            long v = bitsLE(b, start, end, 0, avail);
            return n - avail >= 64 ? 0 : v << (n - avail);
        }

        long read(int n) {
            long v = peek(n);
            remaining -= n;
            return v;
        }
    }

    // --- FSE ---------------------------------------------------------------------------------------------------------

    private static final class Fse {
        int log;
        int[] symbol;
        int[] nbBits;
        int[] base;

        static Fse rle(int sym) {
            Fse t = new Fse();
            t.log = 0;
            t.symbol = new int[] {sym};
            t.nbBits = new int[] {0};
            t.base = new int[] {0};
            return t;
        }

        static Fse build(short[] norm, int nSym, int log) {
            int size = 1 << log;
            Fse t = new Fse();
            t.log = log;
            t.symbol = new int[size];
            t.nbBits = new int[size];
            t.base = new int[size];
            int[] next = new int[nSym];
            int high = size;
            for (int s = 0; s < nSym; s++) {
                if (norm[s] == -1) {
                    if (high == 0) throw new ZstdException("FSE table overflow");
                    t.symbol[--high] = s;
                    next[s] = 1;
                }
            }
            int step = (size >> 1) + (size >> 3) + 3;
            int mask = size - 1;
            int pos = 0;
            for (int s = 0; s < nSym; s++) {
                if (norm[s] <= 0) continue;
                next[s] = norm[s];
                for (int i = 0; i < norm[s]; i++) {
                    t.symbol[pos] = s;
                    do {
                        pos = (pos + step) & mask;
                    } while (pos >= high);
                }
            }
            if (pos != 0) throw new ZstdException("corrupt FSE distribution");
            for (int u = 0; u < size; u++) {
                int s = t.symbol[u];
                int ns = next[s]++;
                int nb = log - (31 - Integer.numberOfLeadingZeros(ns));
                t.nbBits[u] = nb;
                t.base[u] = (ns << nb) - size;
            }
            return t;
        }

        /** Reads a normalized distribution at src[pos..]; returns the table and sets consumed[0] to bytes used. */
        static Fse readHeader(byte[] src, int pos, int end, int maxLog, int maxSymbols, int[] consumed) {
            long bit = 0;
            int len = end - pos;
            if (len < 1) throw new ZstdException("truncated FSE header");
            int log = (int) bitsLE(src, pos, end, 0, 4) + 5;
            bit = 4;
            if (log > maxLog) throw new ZstdException("FSE accuracy log " + log + " above " + maxLog);
            int remaining = 1 << log;
            short[] norm = new short[256];
            int sym = 0;
            while (remaining > 0 && sym < maxSymbols) {
                int bits = 32 - Integer.numberOfLeadingZeros(remaining + 1);
                if (bit + bits > 8L * len + 64) throw new ZstdException("truncated FSE header");
                int val = (int) bitsLE(src, pos, end, bit, bits);
                int lowerMask = (1 << (bits - 1)) - 1;
                int threshold = (1 << bits) - 1 - (remaining + 1);
                if ((val & lowerMask) < threshold) {
                    val &= lowerMask;
                    bit += bits - 1;
                } else {
                    if (val > lowerMask) val -= threshold;
                    bit += bits;
                }
                int proba = val - 1;
                remaining -= Math.abs(proba);
                norm[sym++] = (short) proba;
                if (proba == 0) {
                    while (true) {
                        int repeat = (int) bitsLE(src, pos, end, bit, 2);
                        bit += 2;
                        for (int i = 0; i < repeat && sym < maxSymbols; i++) norm[sym++] = 0;
                        if (repeat != 3) break;
                        if (bit > 8L * len) throw new ZstdException("truncated FSE header");
                    }
                }
            }
            int bytes = (int) ((bit + 7) >>> 3);
            if (remaining != 0 || bytes > len) throw new ZstdException("corrupt FSE distribution");
            if (sym > maxSymbols) throw new ZstdException("too many FSE symbols");
            consumed[0] = bytes;
            return build(norm, sym, log);
        }
    }

    // --- Huffman -----------------------------------------------------------------------------------------------------

    private static final class Huffman {
        int maxBits;
        byte[] symbol;
        byte[] nbBits;

        /** Reads the tree description at src[pos..end); returns bytes consumed via consumed[0]. */
        static Huffman read(byte[] src, int pos, int end, int[] consumed) {
            if (pos >= end) throw new ZstdException("truncated Huffman tree description");
            int header = src[pos] & 0xff;
            int[] weights = new int[256];
            int n;
            if (header >= 128) {
                n = header - 127;
                int bytes = (n + 1) / 2;
                if (pos + 1 + bytes > end) throw new ZstdException("truncated Huffman weights");
                for (int i = 0; i < n; i++) {
                    int by = src[pos + 1 + i / 2] & 0xff;
                    weights[i] = (i % 2 == 0) ? by >>> 4 : by & 0xf;
                }
                consumed[0] = 1 + bytes;
            } else {
                int csize = header;
                if (csize == 0 || pos + 1 + csize > end) throw new ZstdException("truncated FSE-compressed Huffman weights");
                int[] used = new int[1];
                Fse t = Fse.readHeader(src, pos + 1, pos + 1 + csize, 7, 256, used);
                Backward bs = new Backward(src, pos + 1 + used[0], csize - used[0]);
                int s1 = (int) bs.read(t.log);
                int s2 = (int) bs.read(t.log);
                n = 0;
                while (true) {
                    if (n >= 255) throw new ZstdException("too many Huffman weights");
                    weights[n++] = t.symbol[s1];
                    s1 = t.base[s1] + (int) bs.read(t.nbBits[s1]);
                    if (bs.remaining < 0) {
                        weights[n++] = t.symbol[s2];
                        break;
                    }
                    if (n >= 255) throw new ZstdException("too many Huffman weights");
                    weights[n++] = t.symbol[s2];
                    s2 = t.base[s2] + (int) bs.read(t.nbBits[s2]);
                    if (bs.remaining < 0) {
                        weights[n++] = t.symbol[s1];
                        break;
                    }
                }
                consumed[0] = 1 + csize;
            }
            return fromWeights(weights, n);
        }

        static Huffman fromWeights(int[] weights, int n) {
            if (n + 1 > 256) throw new ZstdException("too many Huffman symbols");
            long sum = 0;
            for (int i = 0; i < n; i++) {
                if (weights[i] > 11) throw new ZstdException("Huffman weight above 11");
                if (weights[i] > 0) sum += 1L << (weights[i] - 1);
            }
            if (sum == 0) throw new ZstdException("all Huffman weights are zero");
            int maxBits = 64 - Long.numberOfLeadingZeros(sum);
            long left = (1L << maxBits) - sum;
            if ((left & (left - 1)) != 0) throw new ZstdException("corrupt Huffman weights");
            if (maxBits > 11) throw new ZstdException("Huffman depth above 11");
            int lastWeight = 64 - Long.numberOfLeadingZeros(left);
            int[] bits = new int[n + 1];
            for (int i = 0; i < n; i++) bits[i] = weights[i] > 0 ? maxBits + 1 - weights[i] : 0;
            bits[n] = maxBits + 1 - lastWeight;
            int[] rankCount = new int[maxBits + 2];
            for (int b : bits) {
                if (b < 0 || b > maxBits) throw new ZstdException("corrupt Huffman weights");
                rankCount[b]++;
            }
            int size = 1 << maxBits;
            Huffman h = new Huffman();
            h.maxBits = maxBits;
            h.symbol = new byte[size];
            h.nbBits = new byte[size];
            int[] rankIdx = new int[maxBits + 1];
            rankIdx[maxBits] = 0;
            for (int i = maxBits; i >= 1; i--) {
                rankIdx[i - 1] = rankIdx[i] + rankCount[i] * (1 << (maxBits - i));
                if (rankIdx[i - 1] > size) throw new ZstdException("corrupt Huffman table");
                for (int j = rankIdx[i]; j < rankIdx[i - 1]; j++) h.nbBits[j] = (byte) i;
            }
            if (rankIdx[0] != size) throw new ZstdException("corrupt Huffman table");
            for (int s = 0; s <= n; s++) {
                if (bits[s] == 0) continue;
                int code = rankIdx[bits[s]];
                int len = 1 << (maxBits - bits[s]);
                for (int j = code; j < code + len; j++) h.symbol[j] = (byte) s;
                rankIdx[bits[s]] += len;
            }
            return h;
        }

        void decodeStream(byte[] src, int pos, int len, byte[] out, int outPos, int count) {
            Backward bs = new Backward(src, pos, len);
            for (int i = 0; i < count; i++) {
                int idx = (int) bs.peek(maxBits);
                out[outPos + i] = symbol[idx];
                bs.remaining -= nbBits[idx];
            }
            if (bs.remaining != 0) throw new ZstdException("Huffman stream not consumed exactly");
        }
    }

    // --- frame -------------------------------------------------------------------------------------------------------

    private static final class Frame {
        final byte[] src;
        int pos;
        final int end;
        final int maxOutput;
        long contentSize = -1;
        boolean checksum;
        long windowSize;
        byte[] out;
        int outLen;
        Huffman huffman;
        Fse llTable;
        Fse ofTable;
        Fse mlTable;
        final long[] rep = {1, 4, 8};

        Frame(byte[] src, int pos, int end, int maxOutput) {
            this.src = src;
            this.pos = pos;
            this.end = end;
            this.maxOutput = maxOutput;
            header();
        }

        private int u8() {
            if (pos >= end) throw new ZstdException("truncated frame");
            return src[pos++] & 0xff;
        }

        private long le(int n) {
            if (pos + n > end) throw new ZstdException("truncated frame header");
            long v = bitsLE(src, pos, end, 0, 8 * n);
            pos += n;
            return v;
        }

        private void header() {
            if (end - pos < 6) throw new ZstdException("frame too short");
            if ((int) le(4) != MAGIC) throw new ZstdException("bad magic number (not a zstd frame)");
            int fhd = u8();
            int fcsFlag = fhd >>> 6;
            boolean single = (fhd & 0x20) != 0;
            if ((fhd & 0x08) != 0) throw new ZstdException("reserved frame header bit set");
            checksum = (fhd & 0x04) != 0;
            int dictFlag = fhd & 3;
            if (!single) {
                int wd = u8();
                int exp = wd >>> 3;
                long base = 1L << (10 + exp);
                windowSize = base + (base / 8) * (wd & 7);
            }
            int dictBytes = dictFlag == 0 ? 0 : dictFlag == 1 ? 1 : dictFlag == 2 ? 2 : 4;
            if (dictBytes > 0 && le(dictBytes) != 0) throw new ZstdException("dictionaries are not supported");
            int fcsBytes = fcsFlag == 0 ? (single ? 1 : 0) : fcsFlag == 1 ? 2 : fcsFlag == 2 ? 4 : 8;
            if (fcsBytes > 0) {
                contentSize = le(fcsBytes);
                if (fcsBytes == 2) contentSize += 256;
                if (contentSize < 0) throw new ZstdException("content size out of range");
            }
            if (single) windowSize = contentSize;
        }

        byte[] run() {
            int cap = contentSize >= 0 ? (int) Math.min(contentSize, (long) maxOutput + 1) : Math.min(maxOutput, 1 << 16);
            if (contentSize > maxOutput) throw new ZstdException("frame declares " + contentSize + " bytes, over the limit " + maxOutput);
            out = new byte[Math.max(cap, 16)];
            int blockMax = (int) Math.min(MAX_BLOCK, windowSize > 0 ? windowSize : MAX_BLOCK);
            while (true) {
                if (pos + 3 > end) throw new ZstdException("truncated block header");
                int bh = (int) le(3);
                boolean last = (bh & 1) != 0;
                int type = (bh >>> 1) & 3;
                int size = bh >>> 3;
                switch (type) {
                    case 0:
                        if (size > blockMax || pos + size > end) throw new ZstdException("bad raw block size");
                        ensure(size);
                        System.arraycopy(src, pos, out, outLen, size);
                        outLen += size;
                        pos += size;
                        break;
                    case 1: {
                        if (size > blockMax || pos >= end) throw new ZstdException("bad RLE block");
                        byte v = src[pos++];
                        ensure(size);
                        for (int i = 0; i < size; i++) out[outLen++] = v;
                        break;
                    }
                    case 2:
                        if (size > blockMax || pos + size > end) throw new ZstdException("bad compressed block size");
                        compressedBlock(pos, pos + size, blockMax);
                        pos += size;
                        break;
                    default:
                        throw new ZstdException("reserved block type");
                }
                if (last) break;
            }
            if (checksum) {
                if (pos + 4 > end) throw new ZstdException("truncated content checksum");
                pos += 4; // the DTC frame carries its own CRC32 over the compressed bytes
            }
            if (pos != end) throw new ZstdException("bytes after the zstd frame");
            if (contentSize >= 0 && outLen != contentSize) {
                throw new ZstdException("frame decoded to " + outLen + " bytes, its header says " + contentSize);
            }
            return outLen == out.length ? out : java.util.Arrays.copyOf(out, outLen);
        }

        private void ensure(int more) {
            long need = (long) outLen + more;
            if (need > maxOutput) throw new ZstdException("output exceeds the limit of " + maxOutput + " bytes");
            if (contentSize >= 0 && need > contentSize) throw new ZstdException("output exceeds the declared content size");
            if (need > out.length) out = java.util.Arrays.copyOf(out, (int) Math.min(maxOutput, Math.max(need, 2L * out.length)));
        }

        private void compressedBlock(int p, int blockEnd, int blockMax) {
            // literals section
            if (p >= blockEnd) throw new ZstdException("empty compressed block");
            int b0 = src[p] & 0xff;
            int litType = b0 & 3;
            int sf = (b0 >>> 2) & 3;
            byte[] lit;
            int litLen;
            if (litType == 0 || litType == 1) {
                int hl;
                if ((sf & 1) == 0) {
                    litLen = b0 >>> 3;
                    hl = 1;
                } else if (sf == 1) {
                    need(p, 2, blockEnd);
                    litLen = (b0 >>> 4) + ((src[p + 1] & 0xff) << 4);
                    hl = 2;
                } else {
                    need(p, 3, blockEnd);
                    litLen = (b0 >>> 4) + ((src[p + 1] & 0xff) << 4) + ((src[p + 2] & 0xff) << 12);
                    hl = 3;
                }
                if (litLen > blockMax) throw new ZstdException("literals longer than a block");
                p += hl;
                lit = new byte[litLen];
                if (litType == 0) {
                    need(p, litLen, blockEnd);
                    System.arraycopy(src, p, lit, 0, litLen);
                    p += litLen;
                } else {
                    need(p, 1, blockEnd);
                    java.util.Arrays.fill(lit, src[p]);
                    p += 1;
                }
            } else {
                int hl = sf <= 1 ? 3 : sf == 2 ? 4 : 5;
                need(p, hl, blockEnd);
                long h = bitsLE(src, p, blockEnd, 0, 8 * hl);
                int bitsEach = sf <= 1 ? 10 : sf == 2 ? 14 : 18;
                litLen = (int) ((h >>> 4) & ((1L << bitsEach) - 1));
                int compSize = (int) ((h >>> (4 + bitsEach)) & ((1L << bitsEach) - 1));
                boolean four = sf != 0;
                if (litLen > blockMax) throw new ZstdException("literals longer than a block");
                p += hl;
                need(p, compSize, blockEnd);
                int q = p;
                int qEnd = p + compSize;
                if (litType == 2) {
                    int[] used = new int[1];
                    huffman = Huffman.read(src, q, qEnd, used);
                    q += used[0];
                } else if (huffman == null) {
                    throw new ZstdException("treeless literals without a previous Huffman table");
                }
                lit = new byte[litLen];
                if (!four) {
                    huffman.decodeStream(src, q, qEnd - q, lit, 0, litLen);
                } else {
                    if (qEnd - q < 10) throw new ZstdException("truncated Huffman jump table");
                    int s1 = (src[q] & 0xff) | (src[q + 1] & 0xff) << 8;
                    int s2 = (src[q + 2] & 0xff) | (src[q + 3] & 0xff) << 8;
                    int s3 = (src[q + 4] & 0xff) | (src[q + 5] & 0xff) << 8;
                    int s4 = qEnd - q - 6 - s1 - s2 - s3;
                    if (s4 < 1) throw new ZstdException("corrupt Huffman jump table");
                    int per = (litLen + 3) / 4;
                    if (3 * per > litLen) throw new ZstdException("too few literals for 4 streams");
                    int a = q + 6;
                    huffman.decodeStream(src, a, s1, lit, 0, per);
                    huffman.decodeStream(src, a + s1, s2, lit, per, per);
                    huffman.decodeStream(src, a + s1 + s2, s3, lit, 2 * per, per);
                    huffman.decodeStream(src, a + s1 + s2 + s3, s4, lit, 3 * per, litLen - 3 * per);
                }
                p = qEnd;
            }
            // sequences section
            need(p, 1, blockEnd);
            int nbSeq = src[p++] & 0xff;
            if (nbSeq >= 128) {
                if (nbSeq < 255) {
                    need(p, 1, blockEnd);
                    nbSeq = ((nbSeq - 128) << 8) + (src[p++] & 0xff);
                } else {
                    need(p, 2, blockEnd);
                    nbSeq = (src[p] & 0xff) + ((src[p + 1] & 0xff) << 8) + 0x7F00;
                    p += 2;
                }
            }
            int blockStart = outLen;
            if (nbSeq == 0) {
                if (p != blockEnd) throw new ZstdException("bytes after a block without sequences");
                ensure(litLen);
                System.arraycopy(lit, 0, out, outLen, litLen);
                outLen += litLen;
                return;
            }
            need(p, 1, blockEnd);
            int modes = src[p++] & 0xff;
            if ((modes & 3) != 0) throw new ZstdException("reserved sequence mode bits set");
            int[] used = new int[1];
            llTable = table((modes >>> 6) & 3, llTable, LL_DEFAULT, 6, 9, 36, p, blockEnd, used);
            p += used[0];
            ofTable = table((modes >>> 4) & 3, ofTable, OF_DEFAULT, 5, 8, 32, p, blockEnd, used);
            p += used[0];
            mlTable = table((modes >>> 2) & 3, mlTable, ML_DEFAULT, 6, 9, 53, p, blockEnd, used);
            p += used[0];
            Backward bs = new Backward(src, p, blockEnd - p);
            int ll = (int) bs.read(llTable.log);
            int of = (int) bs.read(ofTable.log);
            int ml = (int) bs.read(mlTable.log);
            int litPos = 0;
            for (int i = 0; i < nbSeq; i++) {
                int ofCode = ofTable.symbol[of];
                int llCode = llTable.symbol[ll];
                int mlCode = mlTable.symbol[ml];
                if (llCode > 35 || mlCode > 52 || ofCode > 31) throw new ZstdException("sequence code out of range");
                long ofValue = (1L << ofCode) + bs.read(ofCode);
                int matchLen = ML_BASE[mlCode] + (int) bs.read(ML_BITS[mlCode]);
                int litCount = LL_BASE[llCode] + (int) bs.read(LL_BITS[llCode]);
                if (i != nbSeq - 1) {
                    ll = llTable.base[ll] + (int) bs.read(llTable.nbBits[ll]);
                    ml = mlTable.base[ml] + (int) bs.read(mlTable.nbBits[ml]);
                    of = ofTable.base[of] + (int) bs.read(ofTable.nbBits[of]);
                }
                long offset = offset(ofValue, litCount);
                if (litCount > litLen - litPos) throw new ZstdException("sequence needs more literals than decoded");
                ensure(litCount);
                System.arraycopy(lit, litPos, out, outLen, litCount);
                outLen += litCount;
                litPos += litCount;
                if (offset <= 0 || offset > outLen) throw new ZstdException("match offset " + offset + " reaches before the frame start");
                ensure(matchLen);
                int from = (int) (outLen - offset);
                for (int k = 0; k < matchLen; k++) out[outLen++] = out[from + k];
                if (outLen - blockStart > blockMax) throw new ZstdException("block decodes beyond the maximum block size");
            }
            if (bs.remaining != 0) throw new ZstdException("sequence bitstream not consumed exactly");
            int rest = litLen - litPos;
            ensure(rest);
            System.arraycopy(lit, litPos, out, outLen, rest);
            outLen += rest;
            if (outLen - blockStart > blockMax) throw new ZstdException("block decodes beyond the maximum block size");
        }

        private long offset(long ofValue, int litCount) {
            if (ofValue > 3) {
                long o = ofValue - 3;
                rep[2] = rep[1];
                rep[1] = rep[0];
                rep[0] = o;
                return o;
            }
            int idx = (int) ofValue - 1;
            if (litCount == 0) idx++;
            if (idx == 0) return rep[0];
            long o = idx < 3 ? rep[idx] : rep[0] - 1;
            if (idx > 1) rep[2] = rep[1];
            rep[1] = rep[0];
            rep[0] = o;
            return o;
        }

        private Fse table(int mode, Fse previous, short[] def, int defLog, int maxLog, int maxSym, int p, int blockEnd,
                          int[] used) {
            used[0] = 0;
            switch (mode) {
                case 0: return Fse.build(def, def.length, defLog);
                case 1:
                    need(p, 1, blockEnd);
                    used[0] = 1;
                    return Fse.rle(src[p] & 0xff);
                case 2: return Fse.readHeader(src, p, blockEnd, maxLog, maxSym, used);
                default:
                    if (previous == null) throw new ZstdException("repeat mode without a previous table");
                    return previous;
            }
        }

        private void need(int p, int n, int limit) {
            if (n < 0 || p + n > limit) throw new ZstdException("truncated block");
        }
    }
}
