package org.cooperllm.demo

import org.cooperllm.core.ArtifactManifest
import org.cooperllm.core.DeviceData
import org.cooperllm.core.FederatedDevice
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

    override fun batchSize(step: Int): Int = graph.batchSize

    override fun loss(theta: FloatArray, step: Int): Double {
        val out = run(theta, train.batch(step.toLong(), graph.batchSize))
        return out[0].toTensor().dataAsFloatArray[0].toDouble()
    }

    /** Accuracy on the evaluation file: argmax of the label logits against the labels, over whole batches. */
    override fun accuracy(theta: FloatArray): Double {
        val data = eval ?: return Double.NaN
        val batches = maxOf(1, data.n / graph.batchSize)
        var correct = 0
        var total = 0
        for (b in 0 until batches) {
            val batch = data.batch(b.toLong(), graph.batchSize)
            val logits = run(theta, batch)[1].toTensor().dataAsFloatArray
            val classes = logits.size / batch.size
            for (i in 0 until batch.size) {
                var best = 0
                for (c in 1 until classes) if (logits[i * classes + c] > logits[i * classes + best]) best = c
                if (best.toLong() == batch.labels[i]) correct++
                total++
            }
        }
        return correct.toDouble() / total
    }

    private fun run(theta: FloatArray, batch: DeviceData.Batch): Array<EValue> {
        val shape2 = longArrayOf(batch.size.toLong(), batch.seqLen.toLong())
        val inputs = ArrayList<EValue>(3 + manifest.layout.tensors.size)
        inputs += EValue.from(Tensor.fromBlob(batch.inputIds, shape2))
        inputs += EValue.from(Tensor.fromBlob(batch.attentionMask, shape2))
        inputs += EValue.from(Tensor.fromBlob(batch.labels, longArrayOf(batch.size.toLong())))
        for (t in manifest.layout.tensors) {
            val values = theta.copyOfRange(t.offset, t.offset + t.size)
            inputs += EValue.from(Tensor.fromBlob(values, LongArray(t.shape.size) { t.shape[it].toLong() }))
        }
        return module.forward(*inputs.toTypedArray())
    }

    override fun close() = module.destroy()
}
