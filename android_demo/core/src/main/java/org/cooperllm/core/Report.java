package org.cooperllm.core;

/**
 * One two-point ZO measurement: p = (L(θ+εu) − L(θ−εu)) / 2ε along u(seed) on block (−1 = all blocks). Which kind of
 * direction u is follows from step and the round's directions ({@link Direction#of}), so the wire form needs no
 * field for it.
 */
public final class Report {
    public static final int ALL_BLOCKS = -1;
    public final long seed;
    public final int block;
    public final int step;
    public final double scalar;
    public final int nExamples;

    public Report(long seed, int block, int step, double scalar, int nExamples) {
        if (!Double.isFinite(scalar)) throw new IllegalArgumentException("report scalar must be finite, got " + scalar);
        if (seed < 0) throw new IllegalArgumentException("report seed must be in [0, 2^63-1], got " + seed);
        if (block < ALL_BLOCKS) throw new IllegalArgumentException("report block must be >= -1, got " + block);
        if (step < 0) throw new IllegalArgumentException("report step must be >= 0, got " + step);
        if (nExamples < 1) throw new IllegalArgumentException("report n_examples must be >= 1, got " + nExamples);
        this.seed = seed;
        this.block = block;
        this.step = step;
        this.scalar = scalar;
        this.nExamples = nExamples;
    }

    /** The wire form (cooperllm.protocol.ReportIn). */
    public String toJson() {
        return "{\"seed\":" + seed + ",\"block\":" + block + ",\"step\":" + step + ",\"scalar\":" + Json.number(scalar)
                + ",\"n_examples\":" + nExamples + "}";
    }

    public static Report fromJson(Object o) {
        Json.Obj j = Json.obj(o, "report");
        return new Report(j.getLong("seed"), j.getInt("block"), j.getInt("step"), j.getDouble("scalar"),
                j.getInt("n_examples"));
    }

    @Override
    public String toString() {
        return "Report" + toJson();
    }
}
