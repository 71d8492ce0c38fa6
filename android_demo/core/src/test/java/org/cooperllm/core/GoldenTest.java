package org.cooperllm.core;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** The golden vectors the Python suite checks (cooperllm/spec/perturbation_golden.json), matched bit for bit. */
public class GoldenTest {
    private final Json.Obj golden;

    public GoldenTest() throws IOException {
        String path = System.getProperty("cooperllm.golden", "../../cooperllm/spec/perturbation_golden.json");
        golden = Json.parseObject(new String(Files.readAllBytes(Path.of(path)), StandardCharsets.UTF_8));
        Assert.eq(PortabilityCheck.FORMAT, golden.getLong("format"), "golden format");
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
    public void directionsMatchGolden() {
        Json.Obj d = golden.getObj("directions");
        int n = d.getInt("n"), m = d.getInt("m");
        long seed = d.getLong("seed"), block = d.getLong("block");
        float[] basis = Floats.fromHex(d.getList("basis_row_major"));
        BlockGuidance g = new BlockGuidance(basis, n, m, null);
        float[] z = Perturb.direction(seed, block, n, Direction.ISO, null);
        Assert.bitsEq(Floats.fromHex(d.getList("iso")), z, "iso");
        Assert.bitsEq(Floats.fromHex(d.getList("subspace_scale")), new float[] {Perturb.subspaceScale(n, m)}, "subspace scale");
        Assert.bitsEq(Floats.fromHex(d.getList("projection")), Perturb.projectCoefficients(basis, n, m, z), "projection");
        for (Direction kind : Direction.values()) {
            float[] u = Perturb.direction(seed, block, n, kind, g);
            Assert.bitsEq(Floats.fromHex(d.getList(kind.wireName())), u, kind.wireName());
            // addDirection on zeros with coef 1 is u itself (ISO takes its streaming path, the guided kinds the other)
            float[] out = new float[n + 2];
            Perturb.addDirection(out, 1, n, 1.0, seed, block, kind, g);
            Assert.bitsEq(u, Arrays.copyOfRange(out, 1, n + 1), "addDirection(coef 1) " + kind);
            Assert.check(out[0] == 0f && out[n + 1] == 0f, "addDirection stays inside its block");
        }
    }

    @Test
    public void roundReplaysMatchGoldenBitForBit() {
        List<String> strategies = new ArrayList<>();
        for (Object o : golden.getList("replays")) {
            Json.Obj r = Json.obj(o, "replay");
            String id = r.getString("strategy");
            strategies.add(id);
            float[] theta = PortabilityCheck.replay(r);
            Assert.bitsEq(Floats.fromHex(r.getList("theta1")), theta, id + " theta1");
            Assert.eq(r.getString("theta1_sha256"), Floats.thetaChecksum(theta), id + " theta1 checksum");
            Assert.check(!Floats.thetaChecksum(theta).equals(Floats.thetaChecksum(Floats.fromHex(r.getList("theta0")))),
                    id + ": the round moved θ");
        }
        Assert.eq(List.of("zgr", "zo", "cloud"), strategies, "one replay per kind of round");
    }

    @Test
    public void badInputsFailClearly() {
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(-1, 0, 0), "negative seed");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(0, 1L << 32, 0), "block >= 2^32");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.streamKey(0, 0, 2), "stream 2");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.direction(0, 0, 4, Direction.COMPLEMENT, null), "no basis");
        Assert.raises(IllegalArgumentException.class,
                () -> Perturb.direction(0, 0, 4, Direction.SUBSPACE, new BlockGuidance(new float[6], 3, 2, null)), "basis rows");
        Assert.raises(IllegalArgumentException.class, () -> Perturb.subspaceScale(4, 0), "empty subspace");
        Assert.raises(IllegalArgumentException.class, () -> Direction.fromWire("mixed"), "unknown direction kind");
        Assert.raises(IllegalArgumentException.class, () -> new BlockUpdate(Double.NaN, null), "NaN q");
        Assert.raises(IllegalArgumentException.class, () -> new Report(0, 0, 0, Double.NaN, 1), "NaN scalar");
        Assert.raises(Json.JsonException.class, () -> Json.parse("{\"a\": [1, 2,]}"), "trailing comma");
        Assert.raises(Json.JsonException.class, () -> Json.parse("[".repeat(1000)), "deep nesting");
    }

    @Test
    public void portabilityCheckPassesHereAndCatchesCorruption() throws IOException {
        String path = System.getProperty("cooperllm.golden", "../../cooperllm/spec/perturbation_golden.json");
        String text = new String(Files.readAllBytes(Path.of(path)), StandardCharsets.UTF_8);
        Assert.eq(List.of(), PortabilityCheck.verify(text), "the app's start-up check on this JVM");
        String sha = Json.obj(golden.getList("replays").get(0), "replay").getString("theta1_sha256");
        String corrupted = text.replace(sha, "0".repeat(64));
        if (!corrupted.equals(text)) {
            Assert.check(PortabilityCheck.verify(corrupted).contains("zgr round replay checksum"), "a wrong checksum is reported");
        }
    }
}
