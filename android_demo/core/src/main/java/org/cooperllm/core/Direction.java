package org.cooperllm.core;

import java.util.List;
import java.util.Locale;

/**
 * The kinds of direction a measurement perturbs along (cooperllm.perturb.Direction, docs/PERTURBATIONS.md §4).
 * ISO: the Rademacher z (no guidance). SUBSPACE: s·Vξ, inside the cloud's guidance subspace. COMPLEMENT: z − V(Vᵀz),
 * z without its part in the subspace. A guided round measures the last two separately so each estimate stays
 * unbiased on its own; the round names its kinds and report step s measured the kind at s mod D.
 */
public enum Direction {
    ISO,
    SUBSPACE,
    COMPLEMENT;

    /** The kind as RoundInfo.directions spells it ("iso", "subspace", "complement"). */
    public static Direction fromWire(String name) {
        for (Direction d : values()) if (d.wireName().equals(name)) return d;
        throw new IllegalArgumentException("unknown direction kind '" + name + "'");
    }

    public String wireName() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** The kind report step {@code step} measured: directions[step mod D] (a report carries no other field for it). */
    public static Direction of(List<Direction> directions, int step) {
        if (directions.isEmpty()) throw new IllegalArgumentException("a round without directions has no reports");
        return directions.get(step % directions.size());
    }
}
