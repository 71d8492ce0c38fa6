package org.cooperllm.core;

import java.util.Collections;
import java.util.HashMap;
import java.util.Map;

/**
 * MeZO's verbs on one binary32 θ perturbed in place (device_runtime/engine.py): θ += εz, L₊; θ −= 2εz, L₋;
 * θ += εz (restore); p = (L₊ − L₋)/2ε. z is regenerated from (seed, block), so memory is θ plus one block's z.
 * The local update is {@link RoundReplay#applyRound} on the single report with λ = 0: one source of truth.
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
    private final double alpha;
    private final Map<Integer, BlockGuidance> guidance;
    private double lastLoss = Double.NaN;

    public ZoEngine(float[] theta, ParamLayout layout, LossFunction lossFn, double eps, double alpha,
                    Map<Integer, BlockGuidance> guidance) {
        if (theta.length != layout.total) throw new IllegalArgumentException("θ must hold " + layout.total + " values");
        if (!(eps > 0) || Double.isInfinite(eps)) throw new IllegalArgumentException("eps must be positive and finite");
        if (!(alpha >= 0 && alpha <= 1)) throw new IllegalArgumentException("alpha must be in [0, 1]");
        this.theta = theta;
        this.layout = layout;
        this.lossFn = lossFn;
        this.eps = eps;
        this.alpha = alpha;
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

    /** θ_b += coef·z(seed, b) for every block the report block touches. */
    public void perturb(double coef, long seed, int reportBlock) {
        int[] range = RoundReplay.blocksOf(layout, reportBlock);
        for (int b = range[0]; b < range[1]; b++) {
            ParamLayout.Block blk = layout.blocks.get(b);
            Perturb.addPerturbation(theta, blk.offset, blk.size, coef, seed, b, guidance.get(b), alpha);
        }
    }

    private double forward(int step) throws Exception {
        double l = lossFn.loss(theta, step);
        if (!Double.isFinite(l)) throw new NonFiniteLossException("forward pass returned loss " + l);
        return l;
    }

    /** Two-point SPSA at the current θ; θ is restored (up to float rounding) before returning, even on error. */
    public Report step(long seed, int reportBlock, int step) throws Exception {
        perturb(eps, seed, reportBlock);
        double offset = eps;
        double plus, minus;
        try {
            plus = forward(step);
            perturb(-2.0 * eps, seed, reportBlock);
            offset = -eps;
            minus = forward(step);
        } finally {
            perturb(-offset, seed, reportBlock);
        }
        lastLoss = 0.5 * (plus + minus);
        return new Report(seed, reportBlock, step, (plus - minus) / (2.0 * eps), lossFn.batchSize(step));
    }

    /** θ ← θ − lr·p·z(seed): apply_round on this one report with λ = 0. */
    public void update(Report r, double lr) {
        RoundReplay.applyRound(theta, layout, Collections.singletonList(r), guidance, alpha, 0.0, lr);
    }

    /** The portable per-step seed of device_runtime.engine.step_seed: in [0, 2^63−1]. */
    public static long stepSeed(long baseSeed, long round, long step) {
        return Perturb.mix64(Perturb.mix64(Perturb.mix64(baseSeed) ^ round) ^ step) & Perturb.MAX_SEED;
    }
}
