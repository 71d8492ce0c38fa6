package org.cooperllm.core;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** The ZO loop (MeZO: +εz, forward, −2εz, forward, +εz, update) minimises a quadratic, plain and guided. */
public class ZoTest {
    /** L(θ) = ½ Σ d_i (θ_i − t_i)², evaluated in double; d spans a 10× condition number. */
    static final class Quadratic implements LossFunction {
        final double[] d;
        final double[] t;
        int calls;

        Quadratic(int n) {
            d = new double[n];
            t = new double[n];
            for (int i = 0; i < n; i++) {
                d[i] = 0.1 + 0.9 * i / (n - 1);
                t[i] = Math.sin(1.7 * i + 0.3);
            }
        }

        @Override
        public double loss(float[] theta, int step) {
            calls++;
            double s = 0;
            for (int i = 0; i < theta.length; i++) s += 0.5 * d[i] * (theta[i] - t[i]) * (theta[i] - t[i]);
            return s;
        }

        @Override
        public int batchSize(int step) {
            return 4;
        }
    }

    static ParamLayout twoBlocks(int half) {
        return ParamLayout.build(List.of("a", "b"), List.of(new int[] {half}, new int[] {half}), List.of("layer.0", "layer.1"));
    }

    static double run(ZoEngine e, Quadratic q, int steps, double lr, boolean cycle) throws Exception {
        for (int s = 0; s < steps; s++) {
            int block = cycle ? s % e.layout.blocks.size() : Report.ALL_BLOCKS;
            Report r = e.step(ZoEngine.stepSeed(7, 0, s), block, s);
            e.update(r, lr);
        }
        return q.loss(e.theta, 0);
    }

    @Test
    public void plainMezoMinimisesAQuadratic() throws Exception {
        Quadratic q = new Quadratic(64);
        ParamLayout layout = twoBlocks(32);
        ZoEngine e = new ZoEngine(new float[64], layout, q, 1e-3, 1.0, null);
        double l0 = q.loss(e.theta, 0);
        double l1 = run(e, q, 1500, 0.01, false);
        Assert.check(l1 < 0.02 * l0, "loss " + l0 + " -> " + l1 + " (expected < 2% of start)");
        Assert.eq(2 * 1500 + 2, q.calls, "two forward passes per step");
    }

    @Test
    public void blockCyclingMinimisesAQuadratic() throws Exception {
        Quadratic q = new Quadratic(64);
        ZoEngine e = new ZoEngine(new float[64], twoBlocks(32), q, 1e-3, 1.0, null);
        double l0 = q.loss(e.theta, 0);
        double l1 = run(e, q, 3000, 0.01, true);
        Assert.check(l1 < 0.02 * l0, "loss " + l0 + " -> " + l1);
    }

    @Test
    public void guidanceAlongTheGradientSpeedsItUp() throws Exception {
        // Guidance whose basis holds the (normalised) gradient at the start: the guided run must end lower.
        int n = 256;
        Quadratic q = new Quadratic(n);
        ParamLayout layout = ParamLayout.build(List.of("w"), List.of(new int[] {n}), List.of("layer.0"));
        float[] g = new float[n];
        double norm = 0;
        for (int i = 0; i < n; i++) norm += q.d[i] * q.d[i] * q.t[i] * q.t[i];
        for (int i = 0; i < n; i++) g[i] = (float) (-q.d[i] * q.t[i] / Math.sqrt(norm));
        Map<Integer, BlockGuidance> guidance = new HashMap<>();
        guidance.put(0, new BlockGuidance(g, n, 1, null));
        Quadratic qp = new Quadratic(n);
        double plain = run(new ZoEngine(new float[n], layout, qp, 1e-3, 1.0, null), qp, 100, 0.002, false);
        double guided = run(new ZoEngine(new float[n], layout, q, 1e-3, 0.5, guidance), q, 100, 0.002, false);
        Assert.check(guided < 0.8 * plain, "guided " + guided + " should beat plain " + plain);
    }

    @Test
    public void stepRestoresThetaAndReportsTheProjectedGradient() throws Exception {
        Quadratic q = new Quadratic(64);
        ParamLayout layout = twoBlocks(32);
        float[] theta = new float[64];
        for (int i = 0; i < 64; i++) theta[i] = 0.25f * (i % 5) - 0.5f;
        float[] before = theta.clone();
        ZoEngine e = new ZoEngine(theta, layout, q, 1e-3, 1.0, null);
        Report r = e.step(123, Report.ALL_BLOCKS, 0);
        for (int i = 0; i < 64; i++) Assert.check(Math.abs(theta[i] - before[i]) < 1e-6, "θ restored at " + i);
        byte[] z0 = Perturb.rademacher(123, 0, 32, Perturb.STREAM_ISO);
        byte[] z1 = Perturb.rademacher(123, 1, 32, Perturb.STREAM_ISO);
        double expected = 0;
        for (int i = 0; i < 64; i++) expected += q.d[i] * (before[i] - q.t[i]) * (i < 32 ? z0[i] : z1[i - 32]);
        Assert.check(Math.abs(r.scalar - expected) < 1e-2 * Math.abs(expected) + 1e-3,
                "scalar " + r.scalar + " vs directional derivative " + expected);
        Assert.eq(4, r.nExamples, "n_examples from the loss function");
    }

    @Test
    public void nonFiniteLossIsNotReportedAndThetaIsRestored() {
        float[] theta = new float[8];
        Arrays.fill(theta, 0.5f);
        LossFunction bad = new LossFunction() {
            int n;

            @Override
            public double loss(float[] th, int step) {
                return ++n == 2 ? Double.NaN : 1.0;
            }

            @Override
            public int batchSize(int step) {
                return 1;
            }
        };
        ZoEngine e = new ZoEngine(theta, ParamLayout.build(List.of("w"), List.of(new int[] {8}), List.of("b0")), bad, 1e-2, 1.0, null);
        Assert.raises(ZoEngine.NonFiniteLossException.class, () -> {
            try {
                e.step(5, -1, 0);
            } catch (RuntimeException x) {
                throw x;
            } catch (Exception x) {
                throw new RuntimeException(x);
            }
        }, "NaN loss");
        for (float v : theta) Assert.check(Math.abs(v - 0.5f) < 1e-6, "θ restored after a failed step");
    }

    @Test
    public void localUpdateIsApplyRoundOnOneReport() throws Exception {
        ParamLayout layout = twoBlocks(16);
        float[] a = new float[32];
        float[] b = new float[32];
        Quadratic q = new Quadratic(32);
        ZoEngine e = new ZoEngine(a, layout, q, 1e-3, 1.0, null);
        Report r = e.step(99, 1, 0);
        e.update(r, 0.05);
        RoundReplay.applyRound(b, layout, List.of(r), Map.of(), 1.0, 0.0, 0.05);
        // a went through perturb/restore first, so compare against the same restore applied to b
        float[] c = new float[32];
        new ZoEngine(c, layout, q, 1e-3, 1.0, null).step(99, 1, 0);
        RoundReplay.applyRound(c, layout, List.of(r), Map.of(), 1.0, 0.0, 0.05);
        Assert.bitsEq(c, a, "update == applyRound");
        for (int i = 0; i < 16; i++) Assert.eq(0.0f, a[i], "block 0 untouched by a block-1 report");
    }
}
