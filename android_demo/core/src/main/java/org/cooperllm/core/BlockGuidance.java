package org.cooperllm.core;

/**
 * Cloud guidance for one block: orthonormal basis V (rows × m, binary32, row-major) and c = Vᵀ g_cloud (m, or null
 * before the round closes). The basis shapes the SUBSPACE and COMPLEMENT directions and the subspace step; c is for
 * display only, since the published update already holds what the server made of it.
 */
public final class BlockGuidance {
    public final float[] basis;
    public final int rows;
    public final int m;
    public final float[] coeffs;

    public BlockGuidance(float[] basis, int rows, int m, float[] coeffs) {
        if (rows < 0 || m < 0 || basis.length != (long) rows * m) {
            throw new IllegalArgumentException("basis holds " + basis.length + " values, not " + rows + "x" + m);
        }
        if (coeffs != null && coeffs.length != m) {
            throw new IllegalArgumentException("guidance coeffs (" + coeffs.length + ") do not match basis columns " + m);
        }
        this.basis = basis;
        this.rows = rows;
        this.m = m;
        this.coeffs = coeffs;
    }

    /** The same basis with the round's coefficients (known only when the round closes). */
    public BlockGuidance withCoeffs(float[] c) {
        return new BlockGuidance(basis, rows, m, c);
    }
}
