package org.cooperllm.demo

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.os.PowerManager
import android.util.Log
import androidx.core.app.NotificationCompat
import org.cooperllm.core.CooperClient
import org.cooperllm.core.FederatedDevice
import java.io.IOException

/**
 * Foreground service that takes part in the cloud's run: each open round it syncs θ (replay, else download),
 * computes its SPSA reports through ExecuTorch, puts them in the durable outbox and uploads them — at once, or
 * later through [UploadWorker] when the user allows uploads only on unmetered networks while charging.
 * A killed process loses nothing: θ, the round and the outbox are on disk, and the next start resumes.
 */
class TrainingService : Service() {
    @Volatile private var running = false
    private var thread: Thread? = null
    private var wakeLock: PowerManager.WakeLock? = null

    override fun onBind(intent: Intent?): IBinder? = null

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        if (intent?.action == ACTION_STOP) {
            stopTraining()
            return START_NOT_STICKY
        }
        startInForeground()
        if (!running) {
            running = true
            wakeLock = (getSystemService(POWER_SERVICE) as PowerManager)
                .newWakeLock(PowerManager.PARTIAL_WAKE_LOCK, "cooperllm:training").also { it.acquire(6 * 3600_000L) }
            thread = Thread({ loop() }, "cooperllm-training").also { it.start() }
        }
        return START_STICKY // restarted after a kill: the state on disk says where to resume
    }

    private fun loop() {
        val settings = DemoSettings.load(this)
        try {
            var backoffMs = POLL_MS
            while (running) {
                val done = try {
                    DeviceHolder.use(this) { dev, _ -> step(dev, settings) }.also { backoffMs = POLL_MS }
                } catch (e: IOException) {
                    if (e is CooperClient.ApiException && !e.retryable()) throw e // 4xx: a real refusal, stop
                    ProgressStore.status("cloud unreachable (${e.message}); retrying in ${backoffMs / 1000} s")
                    backoffMs = minOf(backoffMs * 2, MAX_BACKOFF_MS)
                    false
                }
                if (done) break
                Thread.sleep(backoffMs)
            }
        } catch (e: InterruptedException) {
            Log.i(TAG, "training stopped")
        } catch (e: Exception) {
            Log.e(TAG, "training failed", e)
            ProgressStore.status("error: ${e.message}")
        } finally {
            running = false
            stopSelf()
        }
    }

    /** One poll: returns true when the run is over. Network errors propagate to the caller's backoff. */
    private fun step(dev: FederatedDevice, settings: DemoSettings): Boolean {
        dev.enroll(settings.enrolmentKey, Build.MODEL ?: "android") // no-op once enrolled (token kept on disk)
        if (!settings.uploadOnlyUnmeteredCharging && dev.outbox().size() > 0) dev.drain() // reports from before a kill
        val info = try {
            dev.currentRound()
        } catch (e: CooperClient.ApiException) {
            if (e.status == 404) {
                ProgressStore.status("waiting for a run")
                return false
            }
            throw e
        }
        when (info.status) {
            "failed" -> {
                ProgressStore.status("the cloud's run ${info.runId} failed")
                return true
            }
            "finished" -> {
                dev.syncTo(info) // the final model, by replay
                ProgressStore.status("run ${info.runId} finished; θ = server's (${info.thetaChecksum.take(12)}…)")
                return true
            }
        }
        if (info.status != "open" || dev.submitted(info)) return false
        val uploadNow = !settings.uploadOnlyUnmeteredCharging
        dev.runRound(info, uploadNow)
        if (!uploadNow) UploadWorker.schedule(this)
        return false
    }

    private fun startInForeground() {
        val nm = getSystemService(NOTIFICATION_SERVICE) as NotificationManager
        if (Build.VERSION.SDK_INT >= 26) {
            nm.createNotificationChannel(
                NotificationChannel(CHANNEL, getString(R.string.channel_name), NotificationManager.IMPORTANCE_LOW)
            )
        }
        val n: Notification = NotificationCompat.Builder(this, CHANNEL)
            .setContentTitle(getString(R.string.app_name))
            .setContentText("Federated fine-tuning in progress")
            .setSmallIcon(android.R.drawable.stat_sys_upload)
            .setOngoing(true)
            .build()
        if (Build.VERSION.SDK_INT >= 29) {
            startForeground(NOTIFICATION_ID, n, ServiceInfo.FOREGROUND_SERVICE_TYPE_DATA_SYNC)
        } else {
            startForeground(NOTIFICATION_ID, n)
        }
    }

    private fun stopTraining() {
        running = false
        thread?.interrupt()
        stopForeground(STOP_FOREGROUND_REMOVE)
        stopSelf()
    }

    override fun onDestroy() {
        running = false
        thread?.interrupt()
        wakeLock?.let { if (it.isHeld) it.release() }
        super.onDestroy()
    }

    companion object {
        private const val TAG = "CooperLLM"
        private const val CHANNEL = "training"
        private const val NOTIFICATION_ID = 1
        private const val POLL_MS = 2_000L
        private const val MAX_BACKOFF_MS = 120_000L
        const val ACTION_STOP = "org.cooperllm.demo.STOP"

        fun start(context: Context) {
            val i = Intent(context, TrainingService::class.java)
            if (Build.VERSION.SDK_INT >= 26) context.startForegroundService(i) else context.startService(i)
        }

        fun stop(context: Context) {
            context.startService(Intent(context, TrainingService::class.java).setAction(ACTION_STOP))
        }
    }
}
