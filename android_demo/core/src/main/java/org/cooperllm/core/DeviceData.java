package org.cooperllm.core;

import java.io.File;
import java.io.IOException;
import java.util.Map;

/**
 * This phone's private training (or evaluation) examples, already tokenized on the host by
 * android_demo/tools/prepare_device_data.py with the artifact's own tokenizer and prompt template (an on-device BPE
 * tokenizer is out of scope for the demo): safetensors with input_ids (N×L), attention_mask (N×L), labels (N), int64.
 * Batches follow a seeded shuffle, so both forward passes of a step and a resumed run see the same examples.
 */
public final class DeviceData {
    /** One fixed-shape mini-batch, row-major. */
    public static final class Batch {
        public final int size;
        public final int seqLen;
        public final long[] inputIds;
        public final long[] attentionMask;
        public final long[] labels;

        Batch(int size, int seqLen) {
            this.size = size;
            this.seqLen = seqLen;
            inputIds = new long[size * seqLen];
            attentionMask = new long[size * seqLen];
            labels = new long[size];
        }

        /** The most real tokens in a row (attention mask ones): what a length bucket must hold. */
        public int longest() {
            int most = 0;
            for (int i = 0; i < size; i++) {
                int n = 0;
                for (int k = 0; k < seqLen; k++) n += (int) attentionMask[i * seqLen + k];
                most = Math.max(most, n);
            }
            return most;
        }
    }

    public final int n;
    public final int seqLen;
    private final long[] ids;
    private final long[] mask;
    private final long[] labels;
    private final int[] order;

    private DeviceData(long[] ids, long[] mask, long[] labels, int n, int seqLen, long seed) {
        this.ids = ids;
        this.mask = mask;
        this.labels = labels;
        this.n = n;
        this.seqLen = seqLen;
        order = new int[n];
        for (int i = 0; i < n; i++) order[i] = i;
        shuffle(order, 0, n, seed);
    }

    private DeviceData(DeviceData d, int[] order) {
        this.ids = d.ids;
        this.mask = d.mask;
        this.labels = d.labels;
        this.n = d.n;
        this.seqLen = d.seqLen;
        this.order = order;
    }

    /** Fisher–Yates over a[from, from+count) driven by the portable mix64 stream of {@code seed}. */
    private static void shuffle(int[] a, int from, int count, long seed) {
        long state = seed;
        for (int i = count - 1; i > 0; i--) {
            state += Perturb.GAMMA;
            int j = (int) Long.remainderUnsigned(Perturb.mix64(state), i + 1);
            int t = a[from + i];
            a[from + i] = a[from + j];
            a[from + j] = t;
        }
    }

    /** Batches of a pool that are sorted by length before they are cut (as device_runtime.batches.BatchSchedule). */
    public static final int POOL_BATCHES = 50;

    /**
     * The same examples with batches formed by length, for a graph with length buckets: within each pool of
     * POOL_BATCHES batches of the shuffled order, the examples are sorted by their number of real tokens and cut
     * into batches of {@code size}, and the pool's batches are shuffled (seeded) — so a batch holds examples of
     * similar length and runs in a small bucket (ArtifactManifest.Graph.lengthFor), while each pass over the data
     * still holds every example once. Which examples a batch holds is the device's own business: the reports carry
     * their seeds, and nothing the cloud or a replay computes depends on it.
     */
    public DeviceData groupedByLength(int size, long seed) {
        if (size <= 0) throw new IllegalArgumentException("batch size must be positive");
        int[] out = order.clone();
        int used = (n / size) * size; // the tail after the last whole batch keeps its place
        int pool = POOL_BATCHES * size;
        int[] batchOrder = new int[POOL_BATCHES];
        for (int start = 0, p = 0; start < used; start += pool, p++) {
            int count = Math.min(pool, used - start);
            Integer[] chunk = new Integer[count];
            for (int i = 0; i < count; i++) chunk[i] = order[start + i];
            // stable; an anonymous class, not a method reference: the APK's dexer (dx) cannot translate invokedynamic
            java.util.Arrays.sort(chunk, new java.util.Comparator<Integer>() {
                @Override
                public int compare(Integer a, Integer b) {
                    return Integer.compare(realTokens(a), realTokens(b));
                }
            });
            int batches = count / size;
            for (int b = 0; b < batches; b++) batchOrder[b] = b;
            shuffle(batchOrder, 0, batches, seed * 1_000_003L + p);
            for (int b = 0; b < batches; b++) {
                for (int j = 0; j < size; j++) out[start + b * size + j] = chunk[batchOrder[b] * size + j];
            }
        }
        return new DeviceData(this, out);
    }

    private int realTokens(int example) {
        int count = 0;
        for (int k = 0; k < seqLen; k++) count += (int) mask[example * seqLen + k];
        return count;
    }

    public static DeviceData read(File f, long seed) throws IOException {
        return parse(AtomicFiles.read(f), seed);
    }

    public static DeviceData parse(byte[] data, long seed) {
        Map<String, Safetensors.Typed> t = Safetensors.readTensors(data);
        Safetensors.Typed ids = need(t, "input_ids", 2);
        Safetensors.Typed mask = need(t, "attention_mask", 2);
        Safetensors.Typed labels = need(t, "labels", 1);
        int n = (int) ids.shape[0];
        int len = (int) ids.shape[1];
        if (mask.shape[0] != n || mask.shape[1] != len || labels.shape[0] != n) {
            throw new IllegalArgumentException("device data: input_ids, attention_mask and labels disagree on shape");
        }
        if (n == 0) throw new IllegalArgumentException("device data holds no example");
        for (long v : labels.i64) if (v < 0) throw new IllegalArgumentException("device data: negative label");
        for (long v : mask.i64) if (v != 0 && v != 1) throw new IllegalArgumentException("device data: attention_mask must be 0/1");
        return new DeviceData(ids.i64, mask.i64, labels.i64, n, len, seed);
    }

    private static Safetensors.Typed need(Map<String, Safetensors.Typed> t, String name, int rank) {
        Safetensors.Typed v = t.get(name);
        if (v == null) throw new IllegalArgumentException("device data has no '" + name + "' tensor");
        if (!"I64".equals(v.dtype) || v.shape.length != rank) throw new IllegalArgumentException("device data: '" + name + "' must be int64 of rank " + rank);
        return v;
    }

    /** Batch number {@code index} of {@code size} examples: positions index·size … of the shuffled order, wrapping. */
    public Batch batch(long index, int size) {
        if (seqLen <= 0 || size <= 0) throw new IllegalArgumentException("batch size must be positive");
        Batch b = new Batch(size, seqLen);
        for (int j = 0; j < size; j++) {
            int ex = order[(int) Long.remainderUnsigned(index * size + j, n)];
            System.arraycopy(ids, ex * seqLen, b.inputIds, j * seqLen, seqLen);
            System.arraycopy(mask, ex * seqLen, b.attentionMask, j * seqLen, seqLen);
            b.labels[j] = labels[ex];
        }
        return b;
    }

    /** Label of example i in file order (for tests and accuracy bookkeeping). */
    public long label(int i) {
        return labels[i];
    }
}
