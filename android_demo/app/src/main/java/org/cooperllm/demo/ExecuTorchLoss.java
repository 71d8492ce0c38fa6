package org.cooperllm.demo;

import java.util.List;
import org.cooperllm.core.ArtifactManifest;
import org.cooperllm.core.DeviceData;
import org.cooperllm.core.FederatedDevice;
import org.cooperllm.core.GraphInputs;
import org.cooperllm.core.LossFunction;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/**
 * The exported loss graph (model.pte) behind the core's {@link LossFunction}: inputs are input_ids, attention_mask,
 * labels (int64), then every trainable tensor of θ in the manifest's layout order (float32, its own shape); outputs
 * are the mean loss and the label logits. θ is sliced per call, so the perturbed θ the ZO loop holds is what the
 * graph sees.
 */
final class ExecuTorchLoss implements LossFunction, FederatedDevice.Evaluator, AutoCloseable {
    private final ArtifactManifest manifest;
    private final ArtifactManifest.Graph graph;
    private final DeviceData train;
    private final DeviceData eval;
    private final Module module;

    ExecuTorchLoss(ArtifactManifest manifest, DeviceData train, DeviceData eval) throws Exception {
        this.manifest = manifest;
        this.graph = manifest.graph("pte");
        this.train = train;
        this.eval = eval;
        if (train.seqLen != graph.seqLen) {
            throw new IllegalArgumentException("device data has seq_len " + train.seqLen
                    + ", the graph was exported for " + graph.seqLen);
        }
        if (graph.paired) {
            throw new IllegalArgumentException("paired graphs (θ+εz and θ−εz in one call) are not supported by the demo");
        }
        List<String> missing = ExecuTorchRuntime.missing();
        if (!missing.isEmpty()) {
            throw new IllegalStateException("this APK has no working ExecuTorch runtime; missing: " + missing
                    + " (android_demo/README.md, 'Native libraries')");
        }
        this.module = Module.load(manifest.resolve(graph.file).getAbsolutePath());
    }

    @Override
    public int batchSize(int batch) {
        return graph.batchSize;
    }

    @Override
    public double loss(float[] theta, int batch) {
        EValue[] out = run(theta, train.batch(batch, graph.batchSize));
        return out[0].toTensor().getDataAsFloatArray()[0];
    }

    /** Accuracy on the evaluation file: argmax of the label logits against the labels, over whole batches. */
    @Override
    public double accuracy(float[] theta) {
        if (eval == null) return Double.NaN;
        int batches = Math.max(1, eval.n / graph.batchSize);
        int correct = 0;
        for (int b = 0; b < batches; b++) {
            DeviceData.Batch batch = eval.batch(b, graph.batchSize);
            correct += GraphInputs.correct(run(theta, batch)[1].toTensor().getDataAsFloatArray(), batch.labels);
        }
        return (double) correct / (batches * graph.batchSize);
    }

    /** One forward call; the inputs' order, shapes and dtypes come from the core (GraphInputs, JVM-tested). */
    private EValue[] run(float[] theta, DeviceData.Batch batch) {
        List<GraphInputs.Input> inputs = GraphInputs.build(manifest, graph, batch, theta);
        EValue[] values = new EValue[inputs.size()];
        for (int i = 0; i < values.length; i++) {
            GraphInputs.Input in = inputs.get(i);
            Tensor t = in.i64 != null ? Tensor.fromBlob(in.i64, in.shape) : Tensor.fromBlob(in.f32, in.shape);
            values[i] = EValue.from(t);
        }
        return module.forward(values);
    }

    @Override
    public void close() {
        module.destroy();
    }
}
