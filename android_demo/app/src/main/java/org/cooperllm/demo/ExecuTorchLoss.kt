package org.cooperllm.demo

import org.cooperllm.core.ArtifactManifest
import org.cooperllm.core.DeviceData
import org.cooperllm.core.FederatedDevice
import org.cooperllm.core.GraphInputs
import org.cooperllm.core.LossFunction
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * The exported loss graph (model.pte) behind the core's [LossFunction]: inputs are input_ids, attention_mask, labels
 * (int64), then every trainable tensor of θ in the manifest's layout order (float32, its own shape); outputs are the
 * mean loss and the label logits. θ is sliced per call, so the perturbed θ the ZO loop holds is what the graph sees.
 */
class ExecuTorchLoss(
    private val manifest: ArtifactManifest,
    private val train: DeviceData,
    private val eval: DeviceData?,
) : LossFunction, FederatedDevice.Evaluator, AutoCloseable {
    private val graph = manifest.graph("pte")
    private val module: Module = Module.load(manifest.resolve(graph.file).absolutePath)

    init {
        require(train.seqLen == graph.seqLen) {
            "device data has seq_len ${train.seqLen}, the graph was exported for ${graph.seqLen}"
        }
        require(!graph.paired) { "paired graphs (θ+εz and θ−εz in one call) are not supported by the demo" }
    }

    override fun batchSize(batch: Int): Int = graph.batchSize

    override fun loss(theta: FloatArray, batch: Int): Double {
        val out = run(theta, train.batch(batch.toLong(), graph.batchSize))
        return out[0].toTensor().dataAsFloatArray[0].toDouble()
    }

    /** Accuracy on the evaluation file: argmax of the label logits against the labels, over whole batches. */
    override fun accuracy(theta: FloatArray): Double {
        val data = eval ?: return Double.NaN
        val batches = maxOf(1, data.n / graph.batchSize)
        var correct = 0
        for (b in 0 until batches) {
            val batch = data.batch(b.toLong(), graph.batchSize)
            correct += GraphInputs.correct(run(theta, batch)[1].toTensor().dataAsFloatArray, batch.labels)
        }
        return correct.toDouble() / (batches * graph.batchSize)
    }

    /** One forward call; the inputs' order, shapes and dtypes come from the core ([GraphInputs], JVM-tested). */
    private fun run(theta: FloatArray, batch: DeviceData.Batch): Array<EValue> {
        val inputs = GraphInputs.build(manifest, graph, batch, theta).map { input ->
            val tensor = if (input.i64 != null) Tensor.fromBlob(input.i64, input.shape) else Tensor.fromBlob(input.f32, input.shape)
            EValue.from(tensor)
        }
        return module.forward(*inputs.toTypedArray())
    }

    override fun close() = module.destroy()
}
