package org.cooperllm.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * The exported graph's inputs for one call, in the manifest's order: input_ids (B×L), attention_mask (B×L) at the
 * smallest length bucket L that holds the batch (Graph.lengthFor; seq_len for a graph without buckets),
 * labels (B) as int64, then every trainable tensor of θ (float32, its layout shape). Kept in the core so the order
 * and shapes the app hands to ExecuTorch are checked on the JVM; the app only wraps each one in an EValue.
 */
public final class GraphInputs {
    private GraphInputs() {}

    /** One input: its name, shape and values (exactly one of i64 / f32 is set). */
    public static final class Input {
        public final String name;
        public final long[] shape;
        public final long[] i64;
        public final float[] f32;

        Input(String name, long[] shape, long[] i64, float[] f32) {
            this.name = name;
            this.shape = shape;
            this.i64 = i64;
            this.f32 = f32;
        }
    }

    public static List<Input> build(ArtifactManifest m, ArtifactManifest.Graph g, DeviceData.Batch batch, float[] theta) {
        if (batch.size != g.batchSize || batch.seqLen != g.seqLen) {
            throw new IllegalArgumentException("batch is " + batch.size + "x" + batch.seqLen + ", the graph takes "
                    + g.batchSize + "x" + g.seqLen);
        }
        if (theta.length != m.layout.total) throw new IllegalArgumentException("θ does not match the manifest's layout");
        List<Input> out = new ArrayList<>(3 + m.layout.tensors.size());
        int len = g.lengthFor(batch);
        long[] bl = {batch.size, len};
        out.add(new Input("input_ids", bl, lastColumns(batch.inputIds, batch.size, batch.seqLen, len), null));
        out.add(new Input("attention_mask", bl.clone(), lastColumns(batch.attentionMask, batch.size, batch.seqLen, len), null));
        out.add(new Input("labels", new long[] {batch.size}, batch.labels, null));
        for (ParamLayout.Tensor t : m.layout.tensors) {
            long[] shape = new long[t.shape.length];
            for (int i = 0; i < shape.length; i++) shape[i] = t.shape[i];
            float[] v = new float[t.size];
            System.arraycopy(theta, t.offset, v, 0, t.size);
            out.add(new Input(t.name, shape, null, v));
        }
        for (int i = 0; i < out.size(); i++) {
            if (!out.get(i).name.equals(m.inputNames.get(i))) throw new IllegalStateException("input order differs from the manifest");
        }
        return Collections.unmodifiableList(out);
    }

    /** Each row's last len of its width values (row-major): a left-padded batch at a shorter length bucket. */
    static long[] lastColumns(long[] rows, int n, int width, int len) {
        if (len == width) return rows;
        long[] out = new long[n * len];
        for (int i = 0; i < n; i++) System.arraycopy(rows, i * width + width - len, out, i * len, len);
        return out;
    }

    /** Examples whose largest label logit is their label (logits row-major, one row per example). */
    public static int correct(float[] labelLogits, long[] labels) {
        int rows = labels.length;
        if (rows == 0 || labelLogits.length % rows != 0) throw new IllegalArgumentException("logits do not match the labels");
        int classes = labelLogits.length / rows;
        int ok = 0;
        for (int i = 0; i < rows; i++) {
            int best = 0;
            for (int c = 1; c < classes; c++) if (labelLogits[i * classes + c] > labelLogits[i * classes + best]) best = c;
            if (best == labels[i]) ok++;
        }
        return ok;
    }
}
