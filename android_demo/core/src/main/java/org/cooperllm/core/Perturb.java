package org.cooperllm.core;

/**
 * Portable perturbations (docs/PERTURBATIONS.md): a counter-based SplitMix64 stream keyed by (seed, block, stream),
 * Rademacher entries for the isotropic part and the guided mix with the cloud's basis. Integer-exact plus a fixed
 * sequence of binary32 operations, so the phone, Python and the server produce the same z bit for bit.
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

    /** (float) sqrt(α) and (float) sqrt((1 − α)·n/m), computed in binary64 and rounded once. */
    public static float[] guidedScales(double alpha, int n, int m) {
        checkAlpha(alpha);
        if (m <= 0) return new float[] {1.0f, 0.0f};
        return new float[] {(float) Math.sqrt(alpha), (float) Math.sqrt((1.0 - alpha) * n / m)};
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

    /** z for one block of n values; plain Rademacher when there is no basis or α ≥ 1. */
    public static float[] perturbation(long seed, long block, int n, BlockGuidance guidance, double alpha) {
        checkAlpha(alpha);
        byte[] iso = rademacher(seed, block, n, STREAM_ISO);
        float[] z = new float[n];
        if (guidance == null || alpha >= 1.0) {
            for (int i = 0; i < n; i++) z[i] = iso[i];
            return z;
        }
        if (guidance.rows != n) {
            throw new IllegalArgumentException("basis has " + guidance.rows + " rows, block has " + n + " values");
        }
        int m = guidance.m;
        float[] s = guidedScales(alpha, n, m);
        byte[] xiBits = rademacher(seed, block, m, STREAM_XI);
        float[] xi = new float[m];
        for (int k = 0; k < m; k++) xi[k] = xiBits[k];
        float[] u = combineColumns(guidance.basis, n, m, xi);
        float a = s[0], b = s[1];
        for (int i = 0; i < n; i++) z[i] = a * (float) iso[i] + b * u[i];
        return z;
    }

    /** out[off .. off+n) += (float) coef · z(seed, block): the one primitive behind perturb, restore and replay. */
    public static void addPerturbation(float[] out, int off, int n, double coef, long seed, long block,
                                       BlockGuidance guidance, double alpha) {
        float c = (float) coef;
        if (guidance == null || alpha >= 1.0) {
            checkAlpha(alpha);
            long key = streamKey(seed, block, STREAM_ISO);
            long w = 0;
            for (int i = 0; i < n; i++) {
                if ((i & 63) == 0) w = word(key, i >>> 6);
                float zi = ((w >>> (i & 63)) & 1L) == 0 ? 1.0f : -1.0f;
                out[off + i] = out[off + i] + c * zi;
            }
            return;
        }
        float[] z = perturbation(seed, block, n, guidance, alpha);
        for (int i = 0; i < n; i++) out[off + i] = out[off + i] + c * z[i];
    }

    private static void checkAlpha(double alpha) {
        if (!(alpha >= 0.0 && alpha <= 1.0)) throw new IllegalArgumentException("alpha must be in [0, 1], got " + alpha);
    }
}
