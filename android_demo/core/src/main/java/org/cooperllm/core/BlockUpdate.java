package org.cooperllm.core;

/**
 * A closed round's published update of one block (cooperllm.zgr.BlockUpdate, ModelSync.update): θ_b += (float)(q·p)·u
 * for every applied report that touches the block (ISO and COMPLEMENT measurements), then θ_b += Σ_k w_k·V_b[:, k].
 * The server chose the numbers (its rectifier); a device only applies them, so it needs none of the server's
 * running state to replay a round.
 */
public final class BlockUpdate {
    /** Multiplier of each applied report's scalar (binary64 on the wire; 0: no report moves the block). */
    public final double q;
    /** Subspace step in the block's guidance coordinates (exact binary32 values), or null: none. */
    public final float[] w;

    public BlockUpdate(double q, float[] w) {
        if (!Double.isFinite(q)) throw new IllegalArgumentException("update multiplier q must be finite, got " + q);
        if (w != null) {
            for (float x : w) if (!Float.isFinite(x)) throw new IllegalArgumentException("update step w must be finite");
        }
        this.q = q;
        this.w = w;
    }
}
