package org.cooperllm.demo

import android.content.Context
import java.io.File

/** What the user typed on the screen, and where the pushed files live (adb push targets, no root needed). */
data class DemoSettings(val serverUrl: String, val enrolmentKey: String, val uploadOnlyUnmeteredCharging: Boolean) {
    companion object {
        private const val PREFS = "cooperllm"

        fun load(context: Context): DemoSettings {
            val p = context.getSharedPreferences(PREFS, Context.MODE_PRIVATE)
            return DemoSettings(
                p.getString("server_url", "http://127.0.0.1:8000") ?: "",
                p.getString("enrolment_key", "") ?: "",
                p.getBoolean("unmetered_only", false),
            )
        }

        fun save(context: Context, s: DemoSettings) {
            context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).edit()
                .putString("server_url", s.serverUrl)
                .putString("enrolment_key", s.enrolmentKey)
                .putBoolean("unmetered_only", s.uploadOnlyUnmeteredCharging)
                .apply()
        }

        /** /sdcard/Android/data/org.cooperllm.demo/files/artifacts: manifest.json, model.pte, … from the exporter. */
        fun artifactsDir(context: Context): File = File(context.getExternalFilesDir(null), "artifacts")

        /** train.safetensors (and optional eval.safetensors) from android_demo/tools/prepare_device_data.py. */
        fun dataDir(context: Context): File = File(context.getExternalFilesDir(null), "device_data")

        /** θ, the token and the outbox: app-private storage that survives restarts; one folder per cloud URL. */
        fun stateDir(context: Context, serverUrl: String): File {
            val id = java.security.MessageDigest.getInstance("SHA-256").digest(serverUrl.toByteArray())
                .take(6).joinToString("") { "%02x".format(it) }
            return File(File(context.filesDir, "device_state"), id)
        }
    }
}
