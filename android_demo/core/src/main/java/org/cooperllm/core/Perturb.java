package org.cooperllm.core;

/**
 * Portable perturbations (docs/PERTURBATIONS.md, protocol 2): a counter-based SplitMix64 stream keyed by (seed, block,
 * stream), Rademacher entries, and the three kinds of direction built from them and the cloud's basis. Integer-exact
 * plus a fixed sequence of binary32 (and, for Vᵀz, binary64) operations, so the phone, Python and the server produce
 * the same u bit for bit.
 */
public final class Perturb {
    public static final long GAMMA = 0x9E3779B97F4A7C15L;
    public static final long MAX_SEED = Long.MAX_VALUE;
    public static final int STREAM_ISO = 0;
    public static final int STREAM_XI = 1;

    private Perturb() {}

    /** SplitMix64's finaliser (mod 2^64; Java's long arithmetic wraps exactly like uint64). */
    public static long mix64(long x) {
        x = (x ^ (x >>> 30)) * 0xBF58476D1CE4E5B9L;
        x = (x ^ (x >>> 27)) * 0x94D049BB133111EBL;
        return x ^ (x >>> 31);
    }

    /** Key of the stream for (seed, block, stream); block is an unsigned 32-bit index. */
    public static long streamKey(long seed, long block, int stream) {
        if (seed < 0) throw new IllegalArgumentException("seed must be in [0, 2^63-1], got " + seed);
        if (block < 0 || block >= (1L << 32)) throw new IllegalArgumentException("block must be in [0, 2^32), got " + block);
        if (stream != STREAM_ISO && stream != STREAM_XI) {
            throw new IllegalArgumentException("stream must be 0 or 1, got " + stream);
        }
        long k = mix64(seed + GAMMA);
        k = mix64(k ^ (block + GAMMA));
        return mix64(k ^ (stream + GAMMA));
    }

    /** Word j of the stream whose state starts at key: mix64(key + (j+1)·γ). */
    public static long word(long key, long j) {
        return mix64(key + (j + 1) * GAMMA);
    }

    /** n entries in {+1, −1}: entry i is bit (i mod 64) of word i div 64; bit 0 gives +1. */
    public static byte[] rademacher(long seed, long block, int n, int stream) {
        if (n < 0) throw new IllegalArgumentException("n must be >= 0, got " + n);
        long key = streamKey(seed, block, stream);
        byte[] out = new byte[n];
        long w = 0;
        for (int i = 0; i < n; i++) {
            if ((i & 63) == 0) w = word(key, i >>> 6);
            out[i] = (byte) (((w >>> (i & 63)) & 1L) == 0 ? 1 : -1);
        }
        return out;
    }

    /** Σ_k w_k · V[:, k] in binary32, columns summed in order k = 0, 1, … (V row-major, rows × m). */
    public static float[] combineColumns(float[] basis, int rows, int m, float[] weights) {
        if (weights.length != m || basis.length != (long) rows * m) {
            throw new IllegalArgumentException("basis " + rows + "x" + m + " does not match " + weights.length + " weights");
        }
        float[] out = new float[rows];
        for (int k = 0; k < m; k++) {
            float wk = weights[k];
            for (int i = 0; i < rows; i++) out[i] = out[i] + wk * basis[i * m + k];
        }
        return out;
    }

    /** s = (float) sqrt(n/m), in binary64 rounded once: s·Vξ then has the squared norm n of a Rademacher z. */
    public static float subspaceScale(int n, int m) {
        if (n <= 0 || m <= 0) throw new IllegalArgumentException("a subspace needs n > 0 and m > 0, got n=" + n + ", m=" + m);
        return (float) Math.sqrt((double) n / m);
    }

    /**
     * Vᵀz as binary32: each coefficient summed in binary64 in row order i = 0 … n−1 and rounded once. A fixed
     * sequential sum, not a dot-product routine whose order (and so whose rounding) varies by platform.
     */
    public static float[] projectCoefficients(float[] basis, int rows, int m, float[] z) {
        if (z.length != rows || basis.length != (long) rows * m) {
            throw new IllegalArgumentException("basis " + rows + "x" + m + " does not match " + z.length + " values");
        }
        float[] out = new float[m];
        for (int k = 0; k < m; k++) {
            double s = -0.0; // the identity of +: the sum equals numpy's cumsum bit for bit, signed zeros included
            for (int i = 0; i < rows; i++) s += (double) basis[i * m + k] * (double) z[i];
            out[k] = (float) s;
        }
        return out;
    }

    /** u(seed, block) of the given kind for a block of n values; the guided kinds need the block's basis. */
    public static float[] direction(long seed, long block, int n, Direction kind, BlockGuidance guidance) {
        if (kind != Direction.ISO) {
            if (guidance == null) throw new IllegalArgumentException("a " + kind.wireName() + " direction needs the block's guidance basis");
            if (guidance.rows != n) {
                throw new IllegalArgumentException("basis of " + guidance.rows + " rows does not match a block of " + n + " values");
            }
        }
        if (kind == Direction.SUBSPACE) {
            float[] v = combineColumns(guidance.basis, n, guidance.m, signs(seed, block, guidance.m, STREAM_XI));
            float s = subspaceScale(n, guidance.m);
            for (int i = 0; i < n; i++) v[i] = s * v[i];
            return v;
        }
        float[] z = signs(seed, block, n, STREAM_ISO);
        if (kind == Direction.ISO) return z;
        float[] c = projectCoefficients(guidance.basis, n, guidance.m, z);
        float[] v = combineColumns(guidance.basis, n, guidance.m, c);
        for (int i = 0; i < n; i++) z[i] = z[i] - v[i];
        return z;
    }

    /**
     * out[off .. off+n) += (float) coef · u(seed, block): the one primitive behind perturb, restore, the local update
     * and the replay. ISO streams the signs (no block-sized buffer: the common case on a phone).
     */
    public static void addDirection(float[] out, int off, int n, double coef, long seed, long block, Direction kind,
                                    BlockGuidance guidance) {
        float c = (float) coef;
        if (kind == Direction.ISO) {
            long key = streamKey(seed, block, STREAM_ISO);
            long w = 0;
            for (int i = 0; i < n; i++) {
                if ((i & 63) == 0) w = word(key, i >>> 6);
                float zi = ((w >>> (i & 63)) & 1L) == 0 ? 1.0f : -1.0f;
                out[off + i] = out[off + i] + c * zi;
            }
            return;
        }
        float[] u = direction(seed, block, n, kind, guidance);
        for (int i = 0; i < n; i++) out[off + i] = out[off + i] + c * u[i];
    }

    private static float[] signs(long seed, long block, int n, int stream) {
        byte[] r = rademacher(seed, block, n, stream);
        float[] out = new float[n];
        for (int i = 0; i < n; i++) out[i] = r[i];
        return out;
    }
}
