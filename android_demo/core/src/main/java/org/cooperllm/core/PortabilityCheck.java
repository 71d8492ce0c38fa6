package org.cooperllm.core;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Checks this runtime against the golden vectors of docs/PERTURBATIONS.md (cooperllm/spec/perturbation_golden.json):
 * mix64, stream keys and words, Rademacher signs and long-stream hashes, the three kinds of direction (iso, subspace,
 * complement, with the subspace scale and the projection Vᵀz) and three round replays (zgr, zo, cloud) with their
 * checksums. A phone whose VM computed any of these differently would report scalars along directions
 * the server never applies, so the app runs this once before training and refuses on any mismatch.
 */
public final class PortabilityCheck {
    /** The golden file's format this runtime checks (cooperllm/spec/golden.py FORMAT: 2 = protocol 2 directions). */
    public static final long FORMAT = 2;

    private PortabilityCheck() {}

    /** Mismatches, one line each; empty when this runtime reproduces every golden value bit for bit. */
    public static List<String> verify(String goldenJson) {
        List<String> bad = new ArrayList<>();
        Json.Obj g = Json.parseObject(goldenJson);
        if (g.getLong("format") != FORMAT) {
            bad.add("golden format " + g.getLong("format") + " is not supported");
            return bad;
        }
        for (Object o : g.getList("mix64")) {
            Json.Obj e = Json.obj(o, "mix64");
            if (Perturb.mix64(hex64(e.getString("in"))) != hex64(e.getString("out"))) bad.add("mix64(" + e.getString("in") + ")");
        }
        for (Object o : g.getList("streams")) {
            Json.Obj e = Json.obj(o, "stream");
            long seed = e.getLong("seed"), block = e.getLong("block");
            int stream = e.getInt("stream");
            String id = "stream (" + seed + ", " + block + ", " + stream + ")";
            long key = Perturb.streamKey(seed, block, stream);
            if (key != hex64(e.getString("key"))) bad.add(id + " key");
            List<Object> words = e.getList("words");
            for (int j = 0; j < words.size(); j++) if (Perturb.word(key, j) != hex64((String) words.get(j))) bad.add(id + " word " + j);
            StringBuilder signs = new StringBuilder();
            for (byte x : Perturb.rademacher(seed, block, 128, stream)) signs.append(x > 0 ? '+' : '-');
            if (!signs.toString().equals(e.getString("first_128"))) bad.add(id + " first_128");
            for (String k : e.asMap().keySet()) {
                if (!k.startsWith("sha256_bits_")) continue;
                int n = Integer.parseInt(k.substring("sha256_bits_".length()));
                byte[] r = Perturb.rademacher(seed, block, n, stream);
                byte[] packed = new byte[(n + 7) / 8];
                for (int i = 0; i < n; i++) if (r[i] < 0) packed[i >> 3] |= (byte) (1 << (i & 7));
                if (!Floats.sha256Hex(packed).equals(e.getString(k))) bad.add(id + " " + k);
            }
        }
        Json.Obj d = g.getObj("directions");
        int n = d.getInt("n"), m = d.getInt("m");
        long seed = d.getLong("seed"), block = d.getLong("block");
        float[] basis = Floats.fromHex(d.getList("basis_row_major"));
        BlockGuidance guidance = new BlockGuidance(basis, n, m, null);
        float[] z = Perturb.direction(seed, block, n, Direction.ISO, null);
        if (!sameBits(Floats.fromHex(d.getList("iso")), z)) bad.add("iso direction");
        if (!sameBits(Floats.fromHex(d.getList("subspace_scale")), new float[] {Perturb.subspaceScale(n, m)})) bad.add("subspace scale");
        if (!sameBits(Floats.fromHex(d.getList("projection")), Perturb.projectCoefficients(basis, n, m, z))) bad.add("projection Vᵀz");
        for (Direction kind : new Direction[] {Direction.SUBSPACE, Direction.COMPLEMENT}) {
            float[] u = Perturb.direction(seed, block, n, kind, guidance);
            if (!sameBits(Floats.fromHex(d.getList(kind.wireName())), u)) bad.add(kind.wireName() + " direction");
        }
        for (Object o : g.getList("replays")) {
            Json.Obj r = Json.obj(o, "replay");
            String id = r.getString("strategy") + " round replay";
            float[] theta = replay(r);
            if (!sameBits(Floats.fromHex(r.getList("theta1")), theta)) bad.add(id + " θ1");
            if (!Floats.thetaChecksum(theta).equals(r.getString("theta1_sha256"))) bad.add(id + " checksum");
        }
        return bad;
    }

    /** θ1 of one golden replay: its θ0 with apply_update's inputs as the golden file spells them (w: f32 hex or null). */
    static float[] replay(Json.Obj r) {
        ParamLayout layout = ParamLayout.fromJson(r.getObj("layout"));
        float[] theta = Floats.fromHex(r.getList("theta0"));
        List<Direction> directions = new ArrayList<>();
        for (Object o : r.getList("directions")) directions.add(Direction.fromWire((String) o));
        Map<Integer, BlockGuidance> guidance = new HashMap<>();
        for (Map.Entry<String, Object> e : r.getObj("guidance").asMap().entrySet()) {
            Json.Obj b = Json.obj(e.getValue(), "guidance");
            guidance.put(Integer.parseInt(e.getKey()), new BlockGuidance(Floats.fromHex(b.getList("basis_row_major")),
                    b.getInt("rows"), b.getInt("cols"), Floats.fromHex(b.getList("coeffs"))));
        }
        List<Report> reports = new ArrayList<>();
        for (Object o : r.getList("reports")) reports.add(Report.fromJson(o));
        Map<Integer, BlockUpdate> update = new HashMap<>();
        for (Object o : r.getList("update")) {
            Json.Obj u = Json.obj(o, "update");
            update.put(u.getInt("block"), new BlockUpdate(u.getDouble("q"), u.has("w") ? Floats.fromHex(u.getList("w")) : null));
        }
        RoundReplay.applyUpdate(theta, layout, reports, directions, guidance, update);
        return theta;
    }

    private static long hex64(String h) {
        return Long.parseUnsignedLong(h, 16);
    }

    private static boolean sameBits(float[] a, float[] b) {
        if (a.length != b.length) return false;
        for (int i = 0; i < a.length; i++) if (Float.floatToRawIntBits(a[i]) != Float.floatToRawIntBits(b[i])) return false;
        return true;
    }
}
