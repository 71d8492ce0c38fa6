package org.cooperllm.demo;

import android.app.job.JobInfo;
import android.app.job.JobParameters;
import android.app.job.JobScheduler;
import android.app.job.JobService;
import android.content.ComponentName;
import android.content.Context;
import org.cooperllm.core.ArtifactManifest;
import org.cooperllm.core.FederatedDevice;

/**
 * Drains the durable outbox when the phone is on an unmetered network and charging (JobScheduler constraints, a
 * framework API: no androidx). The job is persisted across reboots; the outbox persists the reports; idempotency
 * keys make a re-upload after a crash count once on the server.
 */
public final class UploadJobService extends JobService {
    private static final int JOB_ID = 1;
    private static final long BACKOFF_MS = 30_000L;

    /** One pending drain at a time; it uploads everything in the outbox, whatever round queued it. */
    static void schedule(Context context) {
        JobScheduler js = (JobScheduler) context.getSystemService(Context.JOB_SCHEDULER_SERVICE);
        for (JobInfo pending : js.getAllPendingJobs()) {
            if (pending.getId() == JOB_ID) return;
        }
        js.schedule(new JobInfo.Builder(JOB_ID, new ComponentName(context, UploadJobService.class))
                .setRequiredNetworkType(JobInfo.NETWORK_TYPE_UNMETERED)
                .setRequiresCharging(true)
                .setBackoffCriteria(BACKOFF_MS, JobInfo.BACKOFF_POLICY_EXPONENTIAL)
                .setPersisted(true)
                .build());
    }

    @Override
    public boolean onStartJob(final JobParameters params) {
        // onStartJob runs on the main thread; the upload does network I/O
        new Thread(new Runnable() {
            @Override
            public void run() {
                boolean retry;
                try {
                    int left = DeviceHolder.use(UploadJobService.this, new DeviceHolder.Action<Integer>() {
                        @Override
                        public Integer run(FederatedDevice device, ArtifactManifest manifest) throws Exception {
                            return device.drain();
                        }
                    });
                    retry = left > 0;
                } catch (Exception e) {
                    ProgressStore.INSTANCE.status("upload failed: " + e.getMessage());
                    retry = true;
                }
                jobFinished(params, retry);
            }
        }, "cooperllm-upload").start();
        return true; // still working, on the thread above
    }

    @Override
    public boolean onStopJob(JobParameters params) {
        return true; // constraints lost mid-upload: try again later (what was sent is counted once)
    }
}
