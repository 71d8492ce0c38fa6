package org.cooperllm.core;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The exact round update (cooperllm/zgr.py apply_round, docs/PERTURBATIONS.md §5): θ ← θ − η·[(1−λ)·ĝ_Z + λ·V c].
 * Devices replay it from seeds and scalars to follow the global model without downloading the adapter.
 */
public final class RoundReplay {
    private RoundReplay() {}

    public static int[] reportsPerBlock(ParamLayout layout, List<Report> reports) {
        int[] counts = new int[layout.blocks.size()];
        for (Report r : reports) {
            int[] range = blocksOf(layout, r.block);
            for (int b = range[0]; b < range[1]; b++) counts[b]++;
        }
        return counts;
    }

    /** [first, end) of the blocks a report touches. */
    public static int[] blocksOf(ParamLayout layout, int block) {
        if (block == Report.ALL_BLOCKS) return new int[] {0, layout.blocks.size()};
        if (block < 0 || block >= layout.blocks.size()) {
            throw new IllegalArgumentException("report names block " + block + ", layout has " + layout.blocks.size());
        }
        return new int[] {block, block + 1};
    }

    /** In place; order is part of the contract: reports in list order, then the cloud term block by block. */
    public static void applyRound(float[] theta, ParamLayout layout, List<Report> reports,
                                  Map<Integer, BlockGuidance> guidance, double alpha, double lam, double eta) {
        if (theta.length != layout.total) {
            throw new IllegalArgumentException("theta has " + theta.length + " values, layout needs " + layout.total);
        }
        int[] counts = reportsPerBlock(layout, reports);
        for (Report r : reports) {
            int[] range = blocksOf(layout, r.block);
            for (int b = range[0]; b < range[1]; b++) {
                BlockGuidance g = guidance.get(b);
                double coef = -(eta * (1.0 - lam) * r.scalar / counts[b]);
                ParamLayout.Block blk = layout.blocks.get(b);
                Perturb.addPerturbation(theta, blk.offset, blk.size, coef, r.seed, b, g, alpha);
            }
        }
        if (lam > 0.0) {
            float s = (float) (-(eta * lam));
            for (Map.Entry<Integer, BlockGuidance> e : new TreeMap<>(guidance).entrySet()) {
                BlockGuidance g = e.getValue();
                if (g.coeffs == null) throw new IllegalArgumentException("guidance for block " + e.getKey() + " has no coefficients");
                ParamLayout.Block blk = layout.blocks.get(e.getKey());
                if (g.rows != blk.size) throw new IllegalArgumentException("guidance for block " + e.getKey() + " does not match the layout");
                float[] w = Perturb.combineColumns(g.basis, g.rows, g.m, g.coeffs);
                for (int i = 0; i < blk.size; i++) theta[blk.offset + i] = theta[blk.offset + i] + s * w[i];
            }
        }
    }
}
