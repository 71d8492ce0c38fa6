package org.cooperllm.demo

import android.content.Context
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.Worker
import androidx.work.WorkerParameters
import java.util.concurrent.TimeUnit

/**
 * Drains the durable outbox when the phone is on an unmetered network and charging (WorkManager constraints).
 * WorkManager persists the request across reboots; the outbox persists the reports; idempotency keys make a
 * re-upload after a crash count once on the server.
 */
class UploadWorker(context: Context, params: WorkerParameters) : Worker(context, params) {
    override fun doWork(): Result = try {
        val left = DeviceHolder.use(applicationContext) { dev, _ -> dev.drain() }
        if (left == 0) Result.success() else Result.retry()
    } catch (e: Exception) {
        ProgressStore.status("upload failed: ${e.message}")
        Result.retry()
    }

    companion object {
        private const val NAME = "cooperllm-upload"

        fun schedule(context: Context) {
            val constraints = Constraints.Builder()
                .setRequiredNetworkType(NetworkType.UNMETERED)
                .setRequiresCharging(true)
                .build()
            val request = OneTimeWorkRequestBuilder<UploadWorker>()
                .setConstraints(constraints)
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
            // one pending drain at a time; it uploads everything in the outbox, whatever round queued it
            WorkManager.getInstance(context).enqueueUniqueWork(NAME, ExistingWorkPolicy.KEEP, request)
        }
    }
}
