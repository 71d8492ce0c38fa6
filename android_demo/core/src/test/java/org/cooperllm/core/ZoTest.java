package org.cooperllm.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * The ZO loop (MeZO: +εu, forward, −2εu, forward, +εu, update) minimises a quadratic, plain and guided (zgr's subspace
 * and complement measurements on one batch); each kind of step measures the directional derivative along its own u.
 */
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
        public double loss(float[] theta, int batch) {
            calls++;
            double s = 0;
            for (int i = 0; i < theta.length; i++) s += 0.5 * d[i] * (theta[i] - t[i]) * (theta[i] - t[i]);
            return s;
        }

        @Override
        public int batchSize(int batch) {
            return 4;
        }

        /** ∇L at θ, in double. */
        double[] gradient(float[] theta) {
            double[] g = new double[theta.length];
            for (int i = 0; i < theta.length; i++) g[i] = d[i] * (theta[i] - t[i]);
            return g;
        }
    }

    static ParamLayout twoBlocks(int half) {
        return ParamLayout.build(List.of("a", "b"), List.of(new int[] {half}, new int[] {half}), List.of("layer.0", "layer.1"));
    }

    /** {@code steps} plain MeZO steps (ISO; all blocks, or cycling through them), each updating θ at once. */
    static double run(ZoEngine e, Quadratic q, int steps, double lr, boolean cycle) throws Exception {
        for (int s = 0; s < steps; s++) {
            int block = cycle ? s % e.layout.blocks.size() : Report.ALL_BLOCKS;
            Report r = e.step(ZoEngine.stepSeed(7, 0, s), block, Direction.ISO, s, s);
            e.update(r, lr, Direction.ISO);
        }
        return q.loss(e.theta, 0);
    }

    private static double dot(float[] u, double[] g, int off) {
        double s = 0;
        for (int i = 0; i < u.length; i++) s += u[i] * g[off + i];
        return s;
    }

    @Test
    public void plainMezoMinimisesAQuadratic() throws Exception {
        Quadratic q = new Quadratic(64);
        ParamLayout layout = twoBlocks(32);
        ZoEngine e = new ZoEngine(new float[64], layout, q, 1e-3, null);
        double l0 = q.loss(e.theta, 0);
        double l1 = run(e, q, 1500, 0.01, false);
        Assert.check(l1 < 0.02 * l0, "loss " + l0 + " -> " + l1 + " (expected < 2% of start)");
        Assert.eq(2 * 1500 + 2, q.calls, "two forward passes per step");
    }

    @Test
    public void blockCyclingMinimisesAQuadratic() throws Exception {
        Quadratic q = new Quadratic(64);
        ZoEngine e = new ZoEngine(new float[64], twoBlocks(32), q, 1e-3, null);
        double l0 = q.loss(e.theta, 0);
        double l1 = run(e, q, 3000, 0.01, true);
        Assert.check(l1 < 0.02 * l0, "loss " + l0 + " -> " + l1);
    }

    @Test
    public void guidanceAlongTheGradientSpeedsItUp() throws Exception {
        // Guidance whose basis holds the (normalised) gradient at the start. A zgr step measures the subspace and the
        // complement on one batch (four forward passes), so at equal forward passes it takes half the plain steps.
        int n = 256;
        ParamLayout layout = ParamLayout.build(List.of("w"), List.of(new int[] {n}), List.of("layer.0"));
        Quadratic q = new Quadratic(n);
        double[] g0 = q.gradient(new float[n]);
        double norm = 0;
        for (double x : g0) norm += x * x;
        float[] basis = new float[n];
        for (int i = 0; i < n; i++) basis[i] = (float) (g0[i] / Math.sqrt(norm));
        ZoEngine guided = new ZoEngine(new float[n], layout, q, 1e-3, Map.of(0, new BlockGuidance(basis, n, 1, null)));
        List<Direction> zgr = List.of(Direction.SUBSPACE, Direction.COMPLEMENT);
        for (int t = 0; t < 50; t++) {
            for (int j = 0; j < 2; j++) {
                Report r = guided.step(ZoEngine.stepSeed(7, 0, 2 * t + j), 0, zgr.get(j), t, 2 * t + j);
                guided.update(r, 0.002, zgr.get(j));
            }
        }
        double l = q.loss(guided.theta, 0);
        Quadratic qp = new Quadratic(n);
        double plain = run(new ZoEngine(new float[n], layout, qp, 1e-3, null), qp, 100, 0.002, false);
        Assert.eq(qp.calls, q.calls, "equal forward passes (and one for the final loss)");
        Assert.check(l < 0.8 * plain, "guided " + l + " should beat plain " + plain);
    }

    @Test
    public void guidedStepsMeasureTheirOwnDirections() throws Exception {
        // block 1 of two, rank-2 basis; the report's step and the loss's batch are the caller's, not mixed up
        int half = 24;
        Quadratic q = new Quadratic(2 * half);
        ParamLayout layout = twoBlocks(half);
        float[] basis = new float[half * 2];
        for (int i = 0; i < half; i++) {
            basis[2 * i] = (float) (1 / Math.sqrt(half)); // two orthonormal columns: constant and alternating
            basis[2 * i + 1] = (float) ((i % 2 == 0 ? 1 : -1) / Math.sqrt(half));
        }
        BlockGuidance g = new BlockGuidance(basis, half, 2, null);
        float[] theta = new float[2 * half];
        for (int i = 0; i < theta.length; i++) theta[i] = 0.1f * (i % 7) - 0.3f;
        double[] grad = q.gradient(theta);
        List<Integer> batches = new ArrayList<>();
        LossFunction spy = new LossFunction() {
            @Override
            public double loss(float[] th, int batch) {
                batches.add(batch);
                return q.loss(th, batch);
            }

            @Override
            public int batchSize(int batch) {
                return 3;
            }
        };
        ZoEngine e = new ZoEngine(theta, layout, spy, 1e-3, Map.of(1, g));
        for (Direction kind : Direction.values()) {
            Report r = e.step(41, 1, kind, 5, 11);
            Assert.eq(11, r.step, "report step");
            Assert.eq(3, r.nExamples, "n_examples of the batch");
            float[] u = Perturb.direction(41, 1, half, kind, g);
            double expected = dot(u, grad, half);
            Assert.check(Math.abs(r.scalar - expected) < 1e-2 * Math.abs(expected) + 1e-3,
                    kind + ": scalar " + r.scalar + " vs uᵀ∇L " + expected);
            double[] coords = new double[2];
            for (int i = 0; i < half; i++) for (int k = 0; k < 2; k++) coords[k] += basis[2 * i + k] * u[i];
            double along = Math.hypot(coords[0], coords[1]), norm = Math.sqrt(dot(u, toDouble(u), 0));
            if (kind == Direction.COMPLEMENT) Assert.check(along < 1e-5 * norm, "complement ⟂ V: |Vᵀu| = " + along);
            if (kind == Direction.SUBSPACE) Assert.check(Math.abs(along - norm) < 1e-5 * norm && Math.abs(norm - Math.sqrt(half)) < 1e-4,
                    "subspace u in span V with ‖u‖² = n: " + along + ", " + norm);
        }
        Assert.eq(List.of(5, 5, 5, 5, 5, 5), batches, "both passes of every kind on the caller's batch");
        Assert.raises(IllegalArgumentException.class, () -> {
            try {
                e.step(41, 0, Direction.COMPLEMENT, 0, 0);
            } catch (RuntimeException x) {
                throw x;
            } catch (Exception x) {
                throw new RuntimeException(x);
            }
        }, "a guided step on a block without guidance");
    }

    private static double[] toDouble(float[] u) {
        double[] out = new double[u.length];
        for (int i = 0; i < u.length; i++) out[i] = u[i];
        return out;
    }

    @Test
    public void stepRestoresThetaAndReportsTheProjectedGradient() throws Exception {
        Quadratic q = new Quadratic(64);
        ParamLayout layout = twoBlocks(32);
        float[] theta = new float[64];
        for (int i = 0; i < 64; i++) theta[i] = 0.25f * (i % 5) - 0.5f;
        float[] before = theta.clone();
        ZoEngine e = new ZoEngine(theta, layout, q, 1e-3, null);
        Report r = e.step(123, Report.ALL_BLOCKS, Direction.ISO, 0, 0);
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
            public double loss(float[] th, int batch) {
                return ++n == 2 ? Double.NaN : 1.0;
            }

            @Override
            public int batchSize(int batch) {
                return 1;
            }
        };
        ZoEngine e = new ZoEngine(theta, ParamLayout.build(List.of("w"), List.of(new int[] {8}), List.of("b0")), bad, 1e-2, null);
        Assert.raises(ZoEngine.NonFiniteLossException.class, () -> {
            try {
                e.step(5, -1, Direction.ISO, 0, 0);
            } catch (RuntimeException x) {
                throw x;
            } catch (Exception x) {
                throw new RuntimeException(x);
            }
        }, "NaN loss");
        for (float v : theta) Assert.check(Math.abs(v - 0.5f) < 1e-6, "θ restored after a failed step");
    }

    @Test
    public void localUpdateIsTheRoundUpdateWithQMinusLr() throws Exception {
        // θ −= lr·p·u is apply_update on the one report with q = −lr: the same binary64 coefficient, the same u
        ParamLayout layout = twoBlocks(16);
        Quadratic q = new Quadratic(32);
        float[] basis = new float[16];
        for (int i = 0; i < 16; i++) basis[i] = 0.25f;
        Map<Integer, BlockGuidance> guidance = Map.of(1, new BlockGuidance(basis, 16, 1, null));
        List<Direction> zgr = List.of(Direction.SUBSPACE, Direction.COMPLEMENT);
        for (Direction kind : new Direction[] {Direction.ISO, Direction.COMPLEMENT}) {
            List<Direction> directions = kind == Direction.ISO ? List.of(Direction.ISO) : zgr;
            float[] a = new float[32];
            ZoEngine e = new ZoEngine(a, layout, q, 1e-3, guidance);
            Report r = e.step(99, 1, kind, 0, 1);
            float[] b = a.clone(); // θ after perturb/restore, before the update
            e.update(r, 0.05, kind);
            RoundReplay.applyUpdate(b, layout, List.of(r), directions, guidance, Map.of(1, new BlockUpdate(-0.05, null)));
            Assert.bitsEq(b, a, kind + ": update == applyUpdate(q = −lr)");
            for (int i = 0; i < 16; i++) Assert.eq(0.0f, a[i], "block 0 untouched by a block-1 report");
            Assert.check(a[20] != 0.0f, kind + ": block 1 moved");
        }
    }
}
