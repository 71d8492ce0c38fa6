package org.cooperllm.demo;

import android.app.Activity;
import android.os.Bundle;
import android.view.View;
import android.widget.CheckBox;
import android.widget.EditText;
import android.widget.ProgressBar;
import android.widget.TextView;
import java.util.List;
import java.util.Locale;

/** The one screen: cloud URL, enrolment key, the upload policy, start/stop, and live progress. */
public final class MainActivity extends Activity implements ProgressStore.Listener {
    private TextView status;
    private ProgressBar bar;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        final EditText url = (EditText) findViewById(R.id.server_url);
        final EditText key = (EditText) findViewById(R.id.enrol_key);
        final CheckBox unmetered = (CheckBox) findViewById(R.id.unmetered_only);
        status = (TextView) findViewById(R.id.status);
        bar = (ProgressBar) findViewById(R.id.step_progress);
        DemoSettings saved = DemoSettings.load(this);
        url.setText(saved.serverUrl);
        key.setText(saved.enrolmentKey);
        unmetered.setChecked(saved.uploadOnlyUnmeteredCharging);
        findViewById(R.id.start).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                DemoSettings.save(MainActivity.this, new DemoSettings(
                        url.getText().toString().trim(), key.getText().toString(), unmetered.isChecked()));
                TrainingService.start(MainActivity.this);
            }
        });
        findViewById(R.id.stop).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                TrainingService.stop(MainActivity.this);
            }
        });
        List<String> missing = ExecuTorchRuntime.missing();
        if (!missing.isEmpty()) {
            ProgressStore.INSTANCE.status("ExecuTorch runtime incomplete in this APK, training cannot start; missing: "
                    + missing);
        }
    }

    @Override
    protected void onStart() {
        super.onStart();
        ProgressStore.INSTANCE.listen(this);
    }

    @Override
    protected void onStop() {
        ProgressStore.INSTANCE.unlisten(this);
        super.onStop();
    }

    @Override
    public void onSnapshot(ProgressStore.Snapshot s) {
        bar.setMax(Math.max(1, s.totalSteps));
        bar.setProgress(s.step);
        status.setText(String.format(Locale.US,
                "status   %s%nround    %d%nstep     %d / %d%nloss     %s%naccuracy %s%nup       %s%ndown     %s%n"
                        + "outbox   %d pending",
                s.status, s.round, s.step, s.totalSteps,
                Double.isNaN(s.loss) ? "–" : String.format(Locale.US, "%.4f", s.loss),
                Double.isNaN(s.accuracy) ? "–" : String.format(Locale.US, "%.1f %%", 100 * s.accuracy),
                bytes(s.bytesUp), bytes(s.bytesDown), s.pendingUploads));
    }

    private static String bytes(long n) {
        if (n >= 1 << 20) return String.format(Locale.US, "%.1f MiB", n / 1048576.0);
        if (n >= 1 << 10) return String.format(Locale.US, "%.1f KiB", n / 1024.0);
        return n + " B";
    }
}
