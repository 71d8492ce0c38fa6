package org.cooperllm.core;

import java.util.Collections;
import java.util.HashMap;
import java.util.Map;

/**
 * MeZO's verbs on one binary32 θ perturbed in place (device_runtime/engine.py): θ += εu, L₊; θ −= 2εu, L₋;
 * θ += εu (restore); p = (L₊ − L₋)/2ε. u is regenerated from (seed, block) and the kind of direction the round asks
 * for (plain, inside the cloud's guidance subspace, or in its complement), so memory is θ plus at most one block's u.
 * Perturbing, restoring and the local update all go through {@link Perturb#addDirection}, the replay's primitive.
 */
public final class ZoEngine {
    /** A forward pass returned NaN or Inf: the step is dropped, never reported. */
    public static final class NonFiniteLossException extends ArithmeticException {
        private static final long serialVersionUID = 1L;

        public NonFiniteLossException(String msg) {
            super(msg);
        }
    }

    public final float[] theta;
    public final ParamLayout layout;
    private final LossFunction lossFn;
    private final double eps;
    private final Map<Integer, BlockGuidance> guidance;
    private double lastLoss = Double.NaN;

    /** guidance: the bases of the blocks a SUBSPACE or COMPLEMENT step may touch (null: plain ISO steps only). */
    public ZoEngine(float[] theta, ParamLayout layout, LossFunction lossFn, double eps, Map<Integer, BlockGuidance> guidance) {
        if (theta.length != layout.total) throw new IllegalArgumentException("θ must hold " + layout.total + " values");
        if (!(eps > 0) || Double.isInfinite(eps)) throw new IllegalArgumentException("eps must be positive and finite");
        this.theta = theta;
        this.layout = layout;
        this.lossFn = lossFn;
        this.eps = eps;
        this.guidance = guidance == null ? Collections.<Integer, BlockGuidance>emptyMap() : new HashMap<>(guidance);
        for (Map.Entry<Integer, BlockGuidance> e : this.guidance.entrySet()) {
            int b = e.getKey();
            if (b < 0 || b >= layout.blocks.size() || e.getValue().rows != layout.blocks.get(b).size) {
                throw new IllegalArgumentException("guidance for block " + b + " does not match the layout");
            }
        }
    }

    /** Mean of L₊ and L₋ of the last step (a free training-loss estimate). */
    public double lastLoss() {
        return lastLoss;
    }

    /** θ_b += coef·u(seed, b) for every block the report block touches, one block's u alive at a time. */
    public void perturb(double coef, long seed, int reportBlock, Direction kind) {
        int[] range = RoundReplay.blocksOf(layout, reportBlock);
        for (int b = range[0]; b < range[1]; b++) {
            BlockGuidance g = guidance.get(b);
            if (kind != Direction.ISO && g == null) {
                throw new IllegalArgumentException("a " + kind.wireName() + " step on block " + b + " needs that block's guidance");
            }
            ParamLayout.Block blk = layout.blocks.get(b);
            Perturb.addDirection(theta, blk.offset, blk.size, coef, seed, b, kind, g);
        }
    }

    private double forward(int batch) throws Exception {
        double l = lossFn.loss(theta, batch);
        if (!Double.isFinite(l)) throw new NonFiniteLossException("forward pass returned loss " + l);
        return l;
    }

    /**
     * Two-point SPSA at the current θ along u(seed) of {@code kind}, on the loss function's batch {@code batch}; the
     * report carries {@code step} (a round's step s measures directions[s mod D] on batch s div D, so the two differ
     * when a round measures several kinds). θ is restored (up to float rounding) before returning, even on error.
     */
    public Report step(long seed, int reportBlock, Direction kind, int batch, int step) throws Exception {
        perturb(eps, seed, reportBlock, kind);
        double offset = eps;
        double plus, minus;
        try {
            plus = forward(batch);
            perturb(-2.0 * eps, seed, reportBlock, kind);
            offset = -eps;
            minus = forward(batch);
        } finally {
            perturb(-offset, seed, reportBlock, kind);
        }
        lastLoss = 0.5 * (plus + minus);
        return new Report(seed, reportBlock, step, (plus - minus) / (2.0 * eps), lossFn.batchSize(batch));
    }

    /** θ ← θ − lr·p·u(seed): MeZO's local update along the direction the report measured. */
    public void update(Report r, double lr, Direction kind) {
        perturb(-lr * r.scalar, r.seed, r.block, kind);
    }

    /** The portable per-step seed of device_runtime.engine.step_seed: in [0, 2^63−1]. */
    public static long stepSeed(long baseSeed, long round, long step) {
        return Perturb.mix64(Perturb.mix64(Perturb.mix64(baseSeed) ^ round) ^ step) & Perturb.MAX_SEED;
    }
}
