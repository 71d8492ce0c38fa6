package org.cooperllm.demo;

import android.content.Context;
import android.content.SharedPreferences;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/** What the user typed on the screen, and where the pushed files live (adb push targets, no root needed). */
final class DemoSettings {
    private static final String PREFS = "cooperllm";

    final String serverUrl;
    final String enrolmentKey;
    final boolean uploadOnlyUnmeteredCharging;

    DemoSettings(String serverUrl, String enrolmentKey, boolean uploadOnlyUnmeteredCharging) {
        this.serverUrl = serverUrl;
        this.enrolmentKey = enrolmentKey;
        this.uploadOnlyUnmeteredCharging = uploadOnlyUnmeteredCharging;
    }

    static DemoSettings load(Context context) {
        SharedPreferences p = context.getSharedPreferences(PREFS, Context.MODE_PRIVATE);
        return new DemoSettings(
                p.getString("server_url", "http://127.0.0.1:8000"),
                p.getString("enrolment_key", ""),
                p.getBoolean("unmetered_only", false));
    }

    static void save(Context context, DemoSettings s) {
        context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).edit()
                .putString("server_url", s.serverUrl)
                .putString("enrolment_key", s.enrolmentKey)
                .putBoolean("unmetered_only", s.uploadOnlyUnmeteredCharging)
                .apply();
    }

    /** /sdcard/Android/data/org.cooperllm.demo/files/artifacts: manifest.json, model.pte, … from the exporter. */
    static File artifactsDir(Context context) {
        return new File(context.getExternalFilesDir(null), "artifacts");
    }

    /** train.safetensors (and optional eval.safetensors) from android_demo/tools/prepare_device_data.py. */
    static File dataDir(Context context) {
        return new File(context.getExternalFilesDir(null), "device_data");
    }

    /** θ, the token and the outbox: app-private storage that survives restarts; one folder per cloud URL. */
    static File stateDir(Context context, String serverUrl) {
        byte[] digest;
        try {
            digest = MessageDigest.getInstance("SHA-256").digest(serverUrl.getBytes(StandardCharsets.UTF_8));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is part of every Android release", e);
        }
        StringBuilder id = new StringBuilder();
        for (int i = 0; i < 6; i++) id.append(String.format("%02x", digest[i] & 0xff));
        return new File(new File(context.getFilesDir(), "device_state"), id.toString());
    }
}
