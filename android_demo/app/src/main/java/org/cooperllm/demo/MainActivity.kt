package org.cooperllm.demo

import android.Manifest
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ProgressBar
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import java.util.Locale

/** The one screen: cloud URL, enrolment key, the upload policy, start/stop, and live progress. */
class MainActivity : AppCompatActivity() {
    private lateinit var status: TextView
    private lateinit var bar: ProgressBar
    private val listener: (ProgressStore.Snapshot) -> Unit = { render(it) }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val url = findViewById<EditText>(R.id.server_url)
        val key = findViewById<EditText>(R.id.enrol_key)
        val unmetered = findViewById<CheckBox>(R.id.unmetered_only)
        status = findViewById(R.id.status)
        bar = findViewById(R.id.step_progress)
        val saved = DemoSettings.load(this)
        url.setText(saved.serverUrl)
        key.setText(saved.enrolmentKey)
        unmetered.isChecked = saved.uploadOnlyUnmeteredCharging
        if (Build.VERSION.SDK_INT >= 33) requestPermissions(arrayOf(Manifest.permission.POST_NOTIFICATIONS), 1)
        findViewById<Button>(R.id.start).setOnClickListener {
            DemoSettings.save(this, DemoSettings(url.text.toString().trim(), key.text.toString(), unmetered.isChecked))
            TrainingService.start(this)
        }
        findViewById<Button>(R.id.stop).setOnClickListener { TrainingService.stop(this) }
    }

    override fun onStart() {
        super.onStart()
        ProgressStore.listen(listener)
    }

    override fun onStop() {
        ProgressStore.unlisten(listener)
        super.onStop()
    }

    private fun render(s: ProgressStore.Snapshot) {
        bar.max = maxOf(1, s.totalSteps)
        bar.progress = s.step
        status.text = String.format(
            Locale.US,
            "status   %s%nround    %d%nstep     %d / %d%nloss     %s%naccuracy %s%nup       %s%ndown     %s%noutbox   %d pending",
            s.status,
            s.round,
            s.step,
            s.totalSteps,
            if (s.loss.isNaN()) "–" else String.format(Locale.US, "%.4f", s.loss),
            if (s.accuracy.isNaN()) "–" else String.format(Locale.US, "%.1f %%", 100 * s.accuracy),
            bytes(s.bytesUp),
            bytes(s.bytesDown),
            s.pendingUploads,
        )
    }

    private fun bytes(n: Long): String = when {
        n >= 1 shl 20 -> String.format(Locale.US, "%.1f MiB", n / 1048576.0)
        n >= 1 shl 10 -> String.format(Locale.US, "%.1f KiB", n / 1024.0)
        else -> "$n B"
    }
}
