package org.cooperllm.core;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * A round's update applied exactly as the server applied it (cooperllm/zgr.py apply_update, docs/PERTURBATIONS.md §5).
 * Devices replay it from seeds, scalars, guidance bases and the published per-block numbers to follow the global model
 * without downloading the adapter; any deviation in order or rounding would show as a checksum mismatch.
 */
public final class RoundReplay {
    private RoundReplay() {}

    /** [first, end) of the blocks a report touches. */
    public static int[] blocksOf(ParamLayout layout, int block) {
        if (block == Report.ALL_BLOCKS) return new int[] {0, layout.blocks.size()};
        if (block < 0 || block >= layout.blocks.size()) {
            throw new IllegalArgumentException("report names block " + block + ", layout has " + layout.blocks.size());
        }
        return new int[] {block, block + 1};
    }

    /**
     * θ ← θ_r + the round's update, in place. Order is part of the contract: reports in list order (blocks increasing
     * within one), then the subspace steps block by block. SUBSPACE measurements are skipped: they reach θ through w.
     */
    public static void applyUpdate(float[] theta, ParamLayout layout, List<Report> reports, List<Direction> directions,
                                   Map<Integer, BlockGuidance> guidance, Map<Integer, BlockUpdate> update) {
        if (theta.length != layout.total) {
            throw new IllegalArgumentException("theta has " + theta.length + " values, layout needs " + layout.total);
        }
        for (Report r : reports) {
            Direction kind = Direction.of(directions, r.step);
            if (kind == Direction.SUBSPACE) continue;
            int[] range = blocksOf(layout, r.block);
            for (int b = range[0]; b < range[1]; b++) {
                BlockUpdate u = update.get(b);
                if (u == null || u.q == 0.0) continue;
                ParamLayout.Block blk = layout.blocks.get(b);
                Perturb.addDirection(theta, blk.offset, blk.size, u.q * r.scalar, r.seed, b, kind, guidance.get(b));
            }
        }
        for (Map.Entry<Integer, BlockUpdate> e : new TreeMap<>(update).entrySet()) {
            float[] w = e.getValue().w;
            if (w == null) continue;
            int b = e.getKey();
            BlockGuidance g = guidance.get(b);
            if (g == null || g.m != w.length) {
                throw new IllegalArgumentException("the update's subspace step for block " + b + " has no matching guidance basis");
            }
            ParamLayout.Block blk = layout.blocks.get(b);
            if (g.rows != blk.size) throw new IllegalArgumentException("guidance for block " + b + " does not match the layout");
            float[] v = Perturb.combineColumns(g.basis, g.rows, g.m, w);
            for (int i = 0; i < blk.size; i++) theta[blk.offset + i] = theta[blk.offset + i] + v[i];
        }
    }
}
