package org.cooperllm.core;

/**
 * Length buckets on the phone: a graph's seq_buckets are read and checked, a batch runs at the smallest bucket that
 * holds its longest row, and the inputs at that bucket are each row's last positions (the rows are left-padded, so
 * only padding is dropped) — as device_runtime's backends do (tokenization.fitting_length, last_tokens).
 */
public class BucketTest {
    private static ArtifactManifest.Graph graph(String buckets) {
        String extra = buckets == null ? "" : ", \"seq_buckets\": " + buckets;
        return new ArtifactManifest.Graph(Json.parseObject("{\"file\": \"model.pte\", \"format\": \"pte\", "
                + "\"backend\": \"xnnpack\", \"batch_size\": 2, \"seq_len\": 32" + extra + "}"));
    }

    /** Two left-padded rows of width 32 with the given numbers of real tokens (ids 1000 + position). */
    private static DeviceData.Batch batch(int a, int b) {
        DeviceData.Batch x = new DeviceData.Batch(2, 32);
        int[] real = {a, b};
        for (int i = 0; i < 2; i++) {
            for (int k = 32 - real[i]; k < 32; k++) {
                x.inputIds[i * 32 + k] = 1000 + k;
                x.attentionMask[i * 32 + k] = 1;
            }
        }
        return x;
    }

    @Test
    public void aBatchRunsAtTheSmallestBucketThatHoldsItsLongestRow() {
        ArtifactManifest.Graph g = graph("[8, 16, 32]");
        Assert.check(java.util.Arrays.equals(new int[] {8, 16, 32}, g.lengths), "buckets read");
        Assert.eq(8, g.lengthFor(batch(3, 8)), "8 real tokens fit bucket 8");
        Assert.eq(16, g.lengthFor(batch(5, 12)), "12 real tokens need bucket 16");
        Assert.eq(32, g.lengthFor(batch(17, 2)), "17 need 32");
        Assert.eq(32, graph(null).lengthFor(batch(3, 3)), "no buckets: seq_len");
        DeviceData.Batch b = batch(5, 12);
        long[] ids = GraphInputs.lastColumns(b.inputIds, 2, 32, 16);
        long[] mask = GraphInputs.lastColumns(b.attentionMask, 2, 32, 16);
        for (int i = 0; i < 2; i++) {
            for (int k = 0; k < 16; k++) {
                Assert.eq(b.inputIds[i * 32 + 16 + k], ids[i * 16 + k], "row " + i + " position " + k);
                Assert.eq(b.attentionMask[i * 32 + 16 + k], mask[i * 16 + k], "mask row " + i + " position " + k);
            }
        }
        long kept = 0;
        for (long v : mask) kept += v;
        Assert.eq(5L + 12L, kept, "every real token kept");
    }

    @Test
    public void batchesFormedByLengthHoldEveryExampleOnceAndRunInSmallerBuckets() {
        int n = 400, len = 32;
        long[] ids = new long[n * len];
        long[] mask = new long[n * len];
        long[] labels = new long[n];
        long state = 12345;
        for (int i = 0; i < n; i++) {
            state += Perturb.GAMMA;
            int real = 1 + (int) Long.remainderUnsigned(Perturb.mix64(state), len); // 1 … 32 real tokens
            for (int k = len - real; k < len; k++) {
                ids[i * len + k] = 7;
                mask[i * len + k] = 1;
            }
            labels[i] = i; // the example's index: which examples a batch holds
        }
        byte[] file = Safetensors.writeInputs(java.util.List.of(
                new GraphInputs.Input("input_ids", new long[] {n, len}, ids, null),
                new GraphInputs.Input("attention_mask", new long[] {n, len}, mask, null),
                new GraphInputs.Input("labels", new long[] {n}, labels, null)));
        DeviceData plain = DeviceData.parse(file, 3);
        DeviceData grouped = plain.groupedByLength(8, 11);
        ArtifactManifest.Graph g = graph("[8, 16, 24, 32]");
        java.util.Set<Long> seen = new java.util.HashSet<>();
        long plainTokens = 0, groupedTokens = 0;
        for (int b = 0; b < n / 8; b++) {
            DeviceData.Batch x = grouped.batch(b, 8);
            for (long l : x.labels) Assert.check(seen.add(l), "example " + l + " twice in one pass");
            groupedTokens += g.lengthFor(x);
            plainTokens += g.lengthFor(plain.batch(b, 8));
        }
        Assert.eq(n, seen.size(), "every example once a pass");
        Assert.check(groupedTokens * 10 < plainTokens * 8, "grouped batches run in smaller buckets: " + groupedTokens + " vs " + plainTokens);
        DeviceData again = DeviceData.parse(file, 3).groupedByLength(8, 11);
        for (int b = 0; b < n / 8; b++) {
            Assert.check(java.util.Arrays.equals(grouped.batch(b, 8).labels, again.batch(b, 8).labels), "seeded: batch " + b);
        }
    }

    @Test
    public void badBucketsAreRefusedByName() {
        Assert.raises(IllegalArgumentException.class, () -> graph("[16, 8, 32]"), "descending");
        Assert.raises(IllegalArgumentException.class, () -> graph("[8, 16]"), "last is not seq_len");
        Assert.raises(IllegalArgumentException.class, () -> graph("[0, 32]"), "zero");
    }
}
