package org.cooperllm.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** The golden vectors the Python suite checks (cooperllm/spec/perturbation_golden.json), matched bit for bit. */
public class GoldenTest {
    private final Json.Obj golden;

    public GoldenTest() throws IOException {
        String path = System.getProperty("cooperllm.golden", "../../cooperllm/spec/perturbation_golden.json");
        golden = Json.parseObject(new String(Files.readAllBytes(Path.of(path)), StandardCharsets.UTF_8));
        Assert.eq(1L, golden.getLong("format"), "golden format");
    }

    private static long hex64(String h) {
        return Long.parseUnsignedLong(h, 16);
    }

    @Test
    public void mix64MatchesGolden() {
        for (Object o : golden.getList("mix64")) {
            Json.Obj e = Json.obj(o, "mix64");
            Assert.eq(hex64(e.getString("out")), Perturb.mix64(hex64(e.getString("in"))), "mix64(" + e.getString("in") + ")");
        }
    }

    @Test
    public void streamKeysWordsAndSignsMatchGolden() {
        for (Object o : golden.getList("streams")) {
            Json.Obj e = Json.obj(o, "stream");
            long seed = e.getLong("seed");
            long block = e.getLong("block");
            int stream = e.getInt("stream");
            long key = Perturb.streamKey(seed, block, stream);
            String id = "(" + seed + "," + block + "," + stream + ")";
            Assert.eq(hex64(e.getString("key")), key, "key " + id);
            List<Object> words = e.getList("words");
            for (int j = 0; j < words.size(); j++) {
                Assert.eq(hex64((String) words.get(j)), Perturb.word(key, j), "word " + j + " " + id);
            }
            byte[] r = Perturb.rademacher(seed, block, 128, stream);
            StringBuilder signs = new StringBuilder();
            for (byte x : r) signs.append(x > 0 ? '+' : '-');
            Assert.eq(e.getString("first_128"), signs.toString(), "first_128 " + id);
        }
    }

    @Test
    public void longStreamsMatchGoldenHashes() {
        for (Object o : golden.getList("streams")) {
            Json.Obj e = Json.obj(o, "stream");
            for (int n : new int[] {1000, 15360, 460800}) {
                byte[] r = Perturb.rademacher(e.getLong("seed"), e.getLong("block"), n, e.getInt("stream"));
                byte[] packed = new byte[(n + 7) / 8];
                for (int i = 0; i < n; i++) if (r[i] < 0) packed[i >> 3] |= (byte) (1 << (i & 7));
                Assert.eq(e.getString("sha256_bits_" + n), Floats.sha256Hex(packed), "sha256_bits_" + n + " seed " + e.getLong("seed"));
            }
        }
    }

    @Test
    public void guidedPerturbationMatchesGolden() {
        Json.Obj g = golden.getObj("guided");
        int n = g.getInt("n"), m = g.getInt("m");
        float[] basis = Floats.fromHex(g.getList("basis_row_major"));
        float[] z = Perturb.perturbation(g.getLong("seed"), g.getLong("block"), n, new BlockGuidance(basis, n, m, null),
                g.getDouble("alpha"));
        Assert.bitsEq(Floats.fromHex(g.getList("z")), z, "guided z");
        // addPerturbation on zeros with coef 1 is z itself
        float[] out = new float[n];
        Perturb.addPerturbation(out, 0, n, 1.0, g.getLong("seed"), g.getLong("block"), new BlockGuidance(basis, n, m, null),
                g.getDouble("alpha"));
        Assert.bitsEq(z, out, "addPerturbation(coef 1)");
    }

    @Test
    public void roundReplayMatchesGoldenBitForBit() {
        Json.Obj r = golden.getObj("replay");
        ParamLayout layout = ParamLayout.fromJson(r.getObj("layout"));
        float[] theta = Floats.fromHex(r.getList("theta0"));
        Map<Integer, BlockGuidance> guidance = new HashMap<>();
        Json.Obj gs = r.getObj("guidance");
        for (Map.Entry<String, Object> e : gs.asMap().entrySet()) {
            Json.Obj g = Json.obj(e.getValue(), "guidance");
            guidance.put(Integer.parseInt(e.getKey()), new BlockGuidance(Floats.fromHex(g.getList("basis_row_major")),
                    g.getInt("rows"), g.getInt("cols"), Floats.fromHex(g.getList("coeffs"))));
        }
        List<Report> reports = new ArrayList<>();
        for (Object o : r.getList("reports")) reports.add(Report.fromJson(o));
        RoundReplay.applyRound(theta, layout, reports, guidance, r.getDouble("alpha"), r.getDouble("lambda"), r.getDouble("eta"));
        Assert.bitsEq(Floats.fromHex(r.getList("theta1")), theta, "theta1");
        Assert.eq(r.getString("theta1_sha256"), Floats.thetaChecksum(theta), "theta1 checksum");
    }

    @Test
    public void badInputsFailClearly() {
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(-1, 0, 0), "negative seed");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(0, 1L << 32, 0), "block >= 2^32");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(0, 0, 2), "stream 2");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.perturbation(0, 0, 4, null, 1.5), "alpha > 1");
        Assert.raises(IllegalArgumentException.class,
                () -> Perturb.perturbation(0, 0, 4, new BlockGuidance(new float[6], 3, 2, null), 0.5), "basis rows");
        Assert.raises(IllegalArgumentException.class, () -> new Report(0, 0, 0, Double.NaN, 1), "NaN scalar");
        Assert.raises(Json.JsonException.class, () -> Json.parse("{\"a\": [1, 2,]}"), "trailing comma");
        Assert.raises(Json.JsonException.class, () -> Json.parse("[".repeat(1000)), "deep nesting");
    }

    @Test
    public void portabilityCheckPassesHereAndCatchesCorruption() throws IOException {
        String path = System.getProperty("cooperllm.golden", "../../cooperllm/spec/perturbation_golden.json");
        String text = new String(Files.readAllBytes(Path.of(path)), StandardCharsets.UTF_8);
        Assert.eq(List.of(), PortabilityCheck.verify(text), "the app's start-up check on this JVM");
        String corrupted = text.replace(golden.getObj("replay").getString("theta1_sha256"), "0".repeat(64));
        if (!corrupted.equals(text)) {
            Assert.check(PortabilityCheck.verify(corrupted).contains("round replay checksum"), "a wrong checksum is reported");
        }
    }
}
