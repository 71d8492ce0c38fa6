package org.cooperllm.demo;

import android.os.Handler;
import android.os.Looper;
import java.util.concurrent.CopyOnWriteArraySet;
import org.cooperllm.core.FederatedDevice;

/** Latest training progress, pushed by the core on the training thread and delivered to the screen on the UI thread. */
final class ProgressStore implements FederatedDevice.Listener {
    static final ProgressStore INSTANCE = new ProgressStore();

    /** One immutable picture of the progress, as the screen renders it. */
    static final class Snapshot {
        final int round;
        final int step;
        final int totalSteps;
        final double loss;
        final double accuracy;
        final long bytesUp;
        final long bytesDown;
        final int pendingUploads;
        final String status;

        Snapshot(int round, int step, int totalSteps, double loss, double accuracy, long bytesUp, long bytesDown,
                int pendingUploads, String status) {
            this.round = round;
            this.step = step;
            this.totalSteps = totalSteps;
            this.loss = loss;
            this.accuracy = accuracy;
            this.bytesUp = bytesUp;
            this.bytesDown = bytesDown;
            this.pendingUploads = pendingUploads;
            this.status = status;
        }

        Snapshot withStatus(String text) {
            return new Snapshot(round, step, totalSteps, loss, accuracy, bytesUp, bytesDown, pendingUploads, text);
        }
    }

    /** The screen, while it is visible. */
    interface Listener {
        void onSnapshot(Snapshot s);
    }

    private volatile Snapshot latest = new Snapshot(-1, 0, 0, Double.NaN, Double.NaN, 0, 0, 0, "idle");
    private final CopyOnWriteArraySet<Listener> listeners = new CopyOnWriteArraySet<>();
    private final Handler main = new Handler(Looper.getMainLooper());

    private ProgressStore() {}

    @Override
    public void onProgress(FederatedDevice.Progress p) {
        publish(new Snapshot(p.round, p.step, p.totalSteps, p.loss, p.accuracy, p.bytesUp, p.bytesDown,
                p.pendingUploads, p.status));
    }

    void status(String text) {
        publish(latest.withStatus(text));
    }

    private void publish(final Snapshot s) {
        latest = s;
        main.post(new Runnable() {
            @Override
            public void run() {
                for (Listener l : listeners) l.onSnapshot(s);
            }
        });
    }

    void listen(Listener l) {
        listeners.add(l);
        l.onSnapshot(latest);
    }

    void unlisten(Listener l) {
        listeners.remove(l);
    }
}
