package org.cooperllm.demo;

import android.app.Notification;
import android.app.Service;
import android.content.Context;
import android.content.Intent;
import android.os.Build;
import android.os.IBinder;
import android.os.PowerManager;
import android.util.Log;
import java.io.IOException;
import org.cooperllm.core.ArtifactManifest;
import org.cooperllm.core.CooperClient;
import org.cooperllm.core.FederatedDevice;
import org.cooperllm.core.Protocol;

/**
 * Foreground service that takes part in the cloud's run: each open round it syncs θ (replay, else download),
 * computes its SPSA reports through ExecuTorch, puts them in the durable outbox and uploads them — at once, or
 * later through {@link UploadJobService} when the user allows uploads only on unmetered networks while charging.
 * A killed process loses nothing: θ, the round and the outbox are on disk, and the next start resumes.
 */
public final class TrainingService extends Service {
    private static final String TAG = "CooperLLM";
    private static final int NOTIFICATION_ID = 1;
    private static final long POLL_MS = 2_000L;
    private static final long MAX_BACKOFF_MS = 120_000L;
    static final String ACTION_STOP = "org.cooperllm.demo.STOP";

    private volatile boolean running;
    private Thread thread;
    private PowerManager.WakeLock wakeLock;

    static void start(Context context) {
        context.startService(new Intent(context, TrainingService.class));
    }

    static void stop(Context context) {
        context.startService(new Intent(context, TrainingService.class).setAction(ACTION_STOP));
    }

    @Override
    public IBinder onBind(Intent intent) {
        return null;
    }

    @Override
    public int onStartCommand(Intent intent, int flags, int startId) {
        if (intent != null && ACTION_STOP.equals(intent.getAction())) {
            stopTraining();
            return START_NOT_STICKY;
        }
        startInForeground();
        if (!running) {
            running = true;
            PowerManager pm = (PowerManager) getSystemService(POWER_SERVICE);
            wakeLock = pm.newWakeLock(PowerManager.PARTIAL_WAKE_LOCK, "cooperllm:training");
            wakeLock.acquire(6 * 3_600_000L);
            thread = new Thread(new Runnable() {
                @Override
                public void run() {
                    loop();
                }
            }, "cooperllm-training");
            thread.start();
        }
        return START_STICKY; // restarted after a kill: the state on disk says where to resume
    }

    private void loop() {
        final DemoSettings settings = DemoSettings.load(this);
        try {
            long backoffMs = POLL_MS;
            while (running) {
                boolean done;
                try {
                    done = DeviceHolder.use(this, new DeviceHolder.Action<Boolean>() {
                        @Override
                        public Boolean run(FederatedDevice device, ArtifactManifest manifest) throws Exception {
                            return poll(device, settings);
                        }
                    });
                    backoffMs = POLL_MS;
                } catch (IOException e) {
                    // a 4xx is a real refusal: stop; anything else on the network is retried with backoff
                    if (e instanceof CooperClient.ApiException && !((CooperClient.ApiException) e).retryable()) throw e;
                    ProgressStore.INSTANCE.status("cloud unreachable (" + e.getMessage() + "); retrying in "
                            + backoffMs / 1000 + " s");
                    backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
                    done = false;
                }
                if (done) break;
                Thread.sleep(backoffMs);
            }
        } catch (InterruptedException e) {
            Log.i(TAG, "training stopped");
        } catch (Exception e) {
            Log.e(TAG, "training failed", e);
            ProgressStore.INSTANCE.status("error: " + e.getMessage());
        } finally {
            running = false;
            stopSelf();
        }
    }

    /** One poll: returns true when the run is over. Network errors propagate to the caller's backoff. */
    private boolean poll(FederatedDevice device, DemoSettings settings) throws Exception {
        device.enroll(settings.enrolmentKey, Build.MODEL != null ? Build.MODEL : "android"); // no-op once enrolled
        if (!settings.uploadOnlyUnmeteredCharging && device.outbox().size() > 0) device.drain(); // from before a kill
        Protocol.RoundInfo info;
        try {
            info = device.currentRound();
        } catch (CooperClient.ApiException e) {
            if (e.status == 404) {
                ProgressStore.INSTANCE.status("waiting for a run");
                return false;
            }
            throw e;
        }
        if ("failed".equals(info.status)) {
            ProgressStore.INSTANCE.status("the cloud's run " + info.runId + " failed");
            return true;
        }
        if ("finished".equals(info.status)) {
            device.syncTo(info); // the final model, by replay
            ProgressStore.INSTANCE.status("run " + info.runId + " finished; θ = server's ("
                    + info.thetaChecksum.substring(0, Math.min(12, info.thetaChecksum.length())) + "…)");
            return true;
        }
        if (!"open".equals(info.status) || device.submitted(info)) return false;
        boolean uploadNow = !settings.uploadOnlyUnmeteredCharging;
        device.runRound(info, uploadNow);
        if (!uploadNow) UploadJobService.schedule(this);
        return false;
    }

    @SuppressWarnings("deprecation") // Notification.Builder(Context): the API level this APK compiles against
    private void startInForeground() {
        Notification n = new Notification.Builder(this)
                .setContentTitle(getString(R.string.app_name))
                .setContentText(getString(R.string.notification_text))
                .setSmallIcon(android.R.drawable.stat_sys_upload)
                .setOngoing(true)
                .build();
        startForeground(NOTIFICATION_ID, n);
    }

    private void stopTraining() {
        running = false;
        if (thread != null) thread.interrupt();
        stopForeground(true);
        stopSelf();
    }

    @Override
    public void onDestroy() {
        running = false;
        if (thread != null) thread.interrupt();
        if (wakeLock != null && wakeLock.isHeld()) wakeLock.release();
        super.onDestroy();
    }
}
