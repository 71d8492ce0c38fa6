package org.cooperllm.demo

import android.content.Context
import org.cooperllm.core.ArtifactManifest
import org.cooperllm.core.CooperClient
import org.cooperllm.core.DeviceData
import org.cooperllm.core.FederatedDevice
import org.cooperllm.core.LossFunction
import org.cooperllm.core.PortabilityCheck
import java.io.File

/**
 * The one [FederatedDevice] of the process: the training service and the upload worker share it (and so share one
 * outbox file handle); every use goes through [use], which serialises them. The ExecuTorch module is loaded lazily,
 * on the first forward pass, so an upload-only wake-up never maps the model.
 */
object DeviceHolder {
    private var device: FederatedDevice? = null
    private var loss: LazyLoss? = null
    private var manifest: ArtifactManifest? = null
    private var key: String? = null

    @Synchronized
    fun <T> use(context: Context, block: (FederatedDevice, ArtifactManifest) -> T): T {
        val settings = DemoSettings.load(context)
        val artifacts = DemoSettings.artifactsDir(context)
        val k = settings.serverUrl + "|" + artifacts.path
        if (device == null || key != k) {
            close()
            checkPortability(context)
            // sha256 of every artifact file, once per process and settings, before the model is ever loaded
            val m = ArtifactManifest.read(artifacts, true)
            val l = LazyLoss(m, DemoSettings.dataDir(context))
            val d = FederatedDevice(
                CooperClient(settings.serverUrl, null, 60_000),
                m.layout,
                l,
                DemoSettings.stateDir(context, settings.serverUrl),
                ProgressStore,
            )
            d.setLocalArtifacts(m.fileHashes())
            d.setEvaluator { theta -> l.accuracy(theta) }
            device = d
            loss = l
            manifest = m
            key = k
        }
        return block(device!!, manifest!!)
    }

    private var portable = false

    /** Once per process: this VM must reproduce the golden perturbations and replay bit for bit, or not train. */
    private fun checkPortability(context: Context) {
        if (portable) return
        val text = context.assets.open(GOLDEN_ASSET).use { String(it.readBytes(), Charsets.UTF_8) }
        val bad = PortabilityCheck.verify(text)
        check(bad.isEmpty()) { "this device's arithmetic differs from docs/PERTURBATIONS.md: $bad" }
        portable = true
    }

    const val GOLDEN_ASSET = "perturbation_golden.json"

    @Synchronized
    fun close() {
        device?.close()
        loss?.close()
        device = null
        loss = null
        manifest = null
        key = null
    }

    private class LazyLoss(private val manifest: ArtifactManifest, private val dataDir: File) : LossFunction, AutoCloseable {
        private var impl: ExecuTorchLoss? = null

        private fun get(): ExecuTorchLoss = impl ?: run {
            val graph = manifest.graph("pte")
            val shuffled = DeviceData.read(File(dataDir, "train.safetensors"), 0)
            // a graph with length buckets: batches formed by length, so most run in a smaller bucket (GraphInputs)
            val train = if (graph.lengths.size > 1) shuffled.groupedByLength(graph.batchSize, 0) else shuffled
            val evalFile = File(dataDir, "eval.safetensors")
            val eval = if (evalFile.isFile) DeviceData.read(evalFile, 1) else null
            ExecuTorchLoss(manifest, train, eval).also { impl = it }
        }

        override fun loss(theta: FloatArray, step: Int): Double = get().loss(theta, step)

        override fun batchSize(step: Int): Int = manifest.graph("pte").batchSize

        fun accuracy(theta: FloatArray): Double = get().accuracy(theta)

        override fun close() {
            impl?.close()
            impl = null
        }
    }
}
