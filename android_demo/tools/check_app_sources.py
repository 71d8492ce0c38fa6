# ruff: noqa: E501
"""Type-check the Android app's Kotlin sources against the core (real classes) and minimal API stubs.

No Android SDK can be installed where this project is developed, so the APK is built elsewhere. This script is the
next best check that ``android_demo/app`` is consistent with the core's API: it compiles ``core/src/main`` with javac,
writes tiny *signature-only* stubs of the Android, AndroidX (WorkManager, test runner), JUnit and ExecuTorch (1.0.x Java API)
classes the app uses, and compiles every ``app/src/**/*.kt`` with ``kotlinc`` (Debian's ``kotlin`` package, 1.3: trailing commas are
stripped first). The stubs are approximations written by hand, not the SDK: passing here means "no name, type or
signature error against the core and these APIs", not "the APK builds".

    apt-get install -y kotlin && python android_demo/tools/check_app_sources.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent

STUBS = {
    "android/Manifest.java": 'package android; public final class Manifest { public static final class permission { public static final String POST_NOTIFICATIONS = "p"; } }',
    "android/R.java": "package android; public final class R { public static final class drawable { public static final int stat_sys_upload = 1; } }",
    "android/app/Instrumentation.java": "package android.app; public class Instrumentation { public android.content.Context getTargetContext() { return null; } }",
    "android/app/Notification.java": "package android.app; public class Notification {}",
    "android/app/NotificationChannel.java": "package android.app; public class NotificationChannel { public NotificationChannel(String id, CharSequence name, int importance) {} }",
    "android/app/NotificationManager.java": "package android.app; public class NotificationManager { public static final int IMPORTANCE_LOW = 2; public void createNotificationChannel(NotificationChannel c) {} }",
    "android/app/Service.java": "package android.app;\nimport android.content.*; import android.os.IBinder;\npublic abstract class Service extends Context {\n  public static final int START_STICKY = 1; public static final int START_NOT_STICKY = 2; public static final int STOP_FOREGROUND_REMOVE = 1;\n  public abstract IBinder onBind(Intent i);\n  public int onStartCommand(Intent i, int flags, int startId) { return 0; }\n  public void onDestroy() {}\n  public final void startForeground(int id, Notification n) {}\n  public final void startForeground(int id, Notification n, int type) {}\n  public final void stopForeground(int flags) {}\n  public final void stopSelf() {}\n  public SharedPreferences getSharedPreferences(String name, int mode) { return null; }\n  public java.io.File getExternalFilesDir(String type) { return null; }\n  public java.io.File getFilesDir() { return null; }\n  public Object getSystemService(String name) { return null; }\n  public ComponentName startForegroundService(Intent i) { return null; }\n  public ComponentName startService(Intent i) { return null; }\n  public Context getApplicationContext() { return this; }\n  public android.content.res.AssetManager getAssets() { return null; }\n}",
    "android/content/ComponentName.java": "package android.content; public class ComponentName {}",
    "android/content/Context.java": 'package android.content;\nimport java.io.File;\npublic abstract class Context {\n  public static final int MODE_PRIVATE = 0;\n  public static final String POWER_SERVICE = "power";\n  public static final String NOTIFICATION_SERVICE = "notification";\n  public abstract SharedPreferences getSharedPreferences(String name, int mode);\n  public abstract File getExternalFilesDir(String type);\n  public abstract File getFilesDir();\n  public abstract Object getSystemService(String name);\n  public abstract android.content.ComponentName startForegroundService(Intent i);\n  public abstract android.content.ComponentName startService(Intent i);\n  public final String getString(int id) { return ""; }\n  public abstract Context getApplicationContext();\n  public abstract android.content.res.AssetManager getAssets();\n}',
    "android/content/Intent.java": "package android.content;\npublic class Intent { public Intent(Context c, Class<?> cls) {} public String getAction() { return null; } public Intent setAction(String a) { return this; } }",
    "android/content/SharedPreferences.java": "package android.content;\npublic interface SharedPreferences {\n  String getString(String k, String d);\n  boolean getBoolean(String k, boolean d);\n  Editor edit();\n  interface Editor { Editor putString(String k, String v); Editor putBoolean(String k, boolean v); void apply(); }\n}",
    "android/content/pm/ServiceInfo.java": "package android.content.pm; public class ServiceInfo { public static final int FOREGROUND_SERVICE_TYPE_DATA_SYNC = 1; }",
    "android/content/res/AssetManager.java": "package android.content.res; public final class AssetManager { public java.io.InputStream open(String name) throws java.io.IOException { return null; } }",
    "android/os/Build.java": 'package android.os; public class Build { public static final String MODEL = "x"; public static class VERSION { public static final int SDK_INT = 35; } }',
    "android/os/Bundle.java": "package android.os; public class Bundle {}",
    "android/os/Handler.java": "package android.os; public class Handler { public Handler(Looper l) {} public final boolean post(Runnable r) { return true; } }",
    "android/os/IBinder.java": "package android.os; public interface IBinder {}",
    "android/os/Looper.java": "package android.os; public class Looper { public static Looper getMainLooper() { return null; } }",
    "android/os/PowerManager.java": "package android.os;\npublic class PowerManager { public static final int PARTIAL_WAKE_LOCK = 1;\n  public WakeLock newWakeLock(int flags, String tag) { return null; }\n  public static class WakeLock { public void acquire(long t) {} public boolean isHeld() { return false; } public void release() {} } }",
    "android/text/Editable.java": "package android.text; public interface Editable extends CharSequence {}",
    "android/util/Log.java": "package android.util; public class Log { public static int i(String t, String m) { return 0; } public static int e(String t, String m, Throwable e) { return 0; } }",
    "android/view/View.java": "package android.view; public class View { public interface OnClickListener { void onClick(View v); } public void setOnClickListener(OnClickListener l) {} }",
    "android/widget/Button.java": "package android.widget; public class Button extends TextView {}",
    "android/widget/CheckBox.java": "package android.widget; public class CheckBox extends Button { public boolean isChecked() { return false; } public void setChecked(boolean c) {} }",
    "android/widget/EditText.java": "package android.widget; public class EditText extends TextView { @Override public android.text.Editable getText() { return null; } }",
    "android/widget/ProgressBar.java": "package android.widget; public class ProgressBar extends android.view.View { public void setMax(int m) {} public int getMax() { return 0; } public void setProgress(int p) {} public int getProgress() { return 0; } }",
    "android/widget/TextView.java": 'package android.widget; public class TextView extends android.view.View { public CharSequence getText() { return ""; } public void setText(CharSequence t) {} }',
    "androidx/appcompat/app/AppCompatActivity.java": "package androidx.appcompat.app;\nimport android.content.*;\npublic class AppCompatActivity extends Context {\n  protected void onCreate(android.os.Bundle b) {}\n  protected void onStart() {}\n  protected void onStop() {}\n  public void setContentView(int id) {}\n  public <T extends android.view.View> T findViewById(int id) { return null; }\n  public final void requestPermissions(String[] p, int code) {}\n  public SharedPreferences getSharedPreferences(String name, int mode) { return null; }\n  public java.io.File getExternalFilesDir(String type) { return null; }\n  public java.io.File getFilesDir() { return null; }\n  public Object getSystemService(String name) { return null; }\n  public ComponentName startForegroundService(Intent i) { return null; }\n  public ComponentName startService(Intent i) { return null; }\n  public Context getApplicationContext() { return this; }\n  public android.content.res.AssetManager getAssets() { return null; }\n}",
    "androidx/core/app/NotificationCompat.java": "package androidx.core.app;\npublic class NotificationCompat { public static class Builder {\n  public Builder(android.content.Context c, String ch) {}\n  public Builder setContentTitle(CharSequence t) { return this; } public Builder setContentText(CharSequence t) { return this; }\n  public Builder setSmallIcon(int i) { return this; } public Builder setOngoing(boolean o) { return this; }\n  public android.app.Notification build() { return null; } } }",
    "androidx/test/ext/junit/runners/AndroidJUnit4.java": "package androidx.test.ext.junit.runners; public final class AndroidJUnit4 extends org.junit.runner.Runner {}",
    "androidx/test/platform/app/InstrumentationRegistry.java": "package androidx.test.platform.app; public final class InstrumentationRegistry { public static android.app.Instrumentation getInstrumentation() { return null; } }",
    "androidx/work/BackoffPolicy.java": "package androidx.work; public enum BackoffPolicy { EXPONENTIAL, LINEAR }",
    "androidx/work/Constraints.java": "package androidx.work;\npublic class Constraints { public static class Builder { public Builder setRequiredNetworkType(NetworkType t) { return this; }\n  public Builder setRequiresCharging(boolean c) { return this; } public Constraints build() { return null; } } }",
    "androidx/work/ExistingWorkPolicy.java": "package androidx.work; public enum ExistingWorkPolicy { KEEP, REPLACE, APPEND }",
    "androidx/work/ListenableWorker.java": "package androidx.work;\npublic abstract class ListenableWorker { public ListenableWorker(android.content.Context c, WorkerParameters p) {}\n  public final android.content.Context getApplicationContext() { return null; }\n  public abstract static class Result { public static Result success() { return null; } public static Result retry() { return null; } } }",
    "androidx/work/NetworkType.java": "package androidx.work; public enum NetworkType { CONNECTED, UNMETERED }",
    "androidx/work/OneTimeWorkRequest.java": "package androidx.work;\npublic class OneTimeWorkRequest { public static class Builder { public Builder(Class<? extends ListenableWorker> c) {}\n  public Builder setConstraints(Constraints c) { return this; }\n  public Builder setBackoffCriteria(BackoffPolicy p, long d, java.util.concurrent.TimeUnit u) { return this; }\n  public OneTimeWorkRequest build() { return null; } } }",
    "androidx/work/WorkManager.java": "package androidx.work;\npublic abstract class WorkManager { public static WorkManager getInstance(android.content.Context c) { return null; }\n  public abstract Object enqueueUniqueWork(String n, ExistingWorkPolicy p, OneTimeWorkRequest r); }",
    "androidx/work/Worker.java": "package androidx.work; public abstract class Worker extends ListenableWorker { public Worker(android.content.Context c, WorkerParameters p) { super(c, p); } public abstract Result doWork(); }",
    "androidx/work/WorkerParameters.java": "package androidx.work; public class WorkerParameters {}",
    "org/cooperllm/demo/R.java": "package org.cooperllm.demo;\npublic final class R {\n  public static final class layout { public static final int activity_main = 1; }\n  public static final class id { public static final int server_url = 1, enrol_key = 2, unmetered_only = 3, start = 4, stop = 5, step_progress = 6, status = 7; }\n  public static final class string { public static final int app_name = 1, channel_name = 2; }\n}",
    "org/junit/Assert.java": "package org.junit; public class Assert { public static void assertEquals(Object expected, Object actual) {} }",
    "org/junit/Test.java": "package org.junit; @java.lang.annotation.Retention(java.lang.annotation.RetentionPolicy.RUNTIME) @java.lang.annotation.Target(java.lang.annotation.ElementType.METHOD) public @interface Test {}",
    "org/junit/runner/RunWith.java": "package org.junit.runner; @java.lang.annotation.Retention(java.lang.annotation.RetentionPolicy.RUNTIME) @java.lang.annotation.Target(java.lang.annotation.ElementType.TYPE) public @interface RunWith { Class<? extends Runner> value(); }",
    "org/junit/runner/Runner.java": "package org.junit.runner; public abstract class Runner {}",
    "org/pytorch/executorch/EValue.java": "package org.pytorch.executorch; public class EValue { public static EValue from(Tensor t) { return null; } public Tensor toTensor() { return null; } }",
    "org/pytorch/executorch/Module.java": "package org.pytorch.executorch; public class Module { public static Module load(String p) { return null; } public EValue[] forward(EValue... in) { return null; } public void destroy() {} }",
    "org/pytorch/executorch/Tensor.java": "package org.pytorch.executorch;\npublic abstract class Tensor { public static Tensor fromBlob(long[] d, long[] s) { return null; } public static Tensor fromBlob(float[] d, long[] s) { return null; }\n  public float[] getDataAsFloatArray() { return null; } }",
}
WORK_KTX = "package androidx.work\ninline fun <reified W : ListenableWorker> OneTimeWorkRequestBuilder(): OneTimeWorkRequest.Builder = OneTimeWorkRequest.Builder(W::class.java)"


def main() -> int:
    kotlinc = shutil.which("kotlinc")
    javac = shutil.which("javac")
    if not kotlinc or not javac:
        print("needs javac and kotlinc (apt-get install -y kotlin)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        core_out = t / "core"
        core_srcs = [str(p) for p in (DEMO / "core" / "src" / "main" / "java").rglob("*.java")]
        subprocess.run([javac, "--release", "8", "-nowarn", "-d", str(core_out), *core_srcs], check=True)
        stub_src = t / "stubs"
        for rel, text in STUBS.items():
            p = stub_src / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text + "\n")
        stub_out = t / "stub-classes"
        subprocess.run([javac, "-nowarn", "-d", str(stub_out), *[str(p) for p in stub_src.rglob("*.java")]], check=True)
        kt_dir = t / "kt"
        kt_dir.mkdir()
        (kt_dir / "WorkKtx.kt").write_text(WORK_KTX + "\n")
        for src in (DEMO / "app" / "src").rglob("*.kt"):
            text = re.sub(r",(\s*\n\s*[\)\]])", r"\1", src.read_text())  # Kotlin 1.3 has no trailing commas
            (kt_dir / src.name).write_text(text)
        cp = f"{stub_out}:{core_out}"
        proc = subprocess.run(
            [kotlinc, "-nowarn", "-jvm-target", "1.8", "-cp", cp, "-d", str(t / "out"), *map(str, kt_dir.glob("*.kt"))],
            capture_output=True,
            text=True,
        )
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]
        if proc.returncode != 0:
            print("\n".join(errors) or proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        n = len(list((t / "out").rglob("*.class")))
        print(f"app sources compile against the core and the API stubs ({n} classes)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
