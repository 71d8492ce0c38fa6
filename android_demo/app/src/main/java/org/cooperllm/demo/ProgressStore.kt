package org.cooperllm.demo

import android.os.Handler
import android.os.Looper
import org.cooperllm.core.FederatedDevice
import java.util.concurrent.CopyOnWriteArraySet

/** Latest training progress, pushed by the core on the training thread and delivered to the screen on the UI thread. */
object ProgressStore : FederatedDevice.Listener {
    data class Snapshot(
        val round: Int,
        val step: Int,
        val totalSteps: Int,
        val loss: Double,
        val accuracy: Double,
        val bytesUp: Long,
        val bytesDown: Long,
        val pendingUploads: Int,
        val status: String,
    )

    @Volatile
    var latest = Snapshot(-1, 0, 0, Double.NaN, Double.NaN, 0, 0, 0, "idle")
        private set
    private val listeners = CopyOnWriteArraySet<(Snapshot) -> Unit>()
    private val main = Handler(Looper.getMainLooper())

    override fun onProgress(p: FederatedDevice.Progress) {
        publish(Snapshot(p.round, p.step, p.totalSteps, p.loss, p.accuracy, p.bytesUp, p.bytesDown, p.pendingUploads, p.status))
    }

    fun status(text: String) = publish(latest.copy(status = text))

    private fun publish(s: Snapshot) {
        latest = s
        main.post { listeners.forEach { it(s) } }
    }

    fun listen(l: (Snapshot) -> Unit) {
        listeners += l
        l(latest)
    }

    fun unlisten(l: (Snapshot) -> Unit) {
        listeners -= l
    }
}
