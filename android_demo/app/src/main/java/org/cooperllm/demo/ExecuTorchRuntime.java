package org.cooperllm.demo;

import java.util.ArrayList;
import java.util.List;

/**
 * Whether this APK can run ExecuTorch at all. The ExecuTorch Java API and libexecutorch.so come from the pinned
 * registry package (android_demo/README.md); they need fbjni (com.facebook.jni + libfbjni.so) and SoLoader's
 * nativeloader, which no registry package reachable by `make android` ships. An APK built without them
 * (`make android` with no ANDROID_EXTRA) would die with NoClassDefFoundError or UnsatisfiedLinkError on the first
 * forward pass; this check turns that into one sentence on the screen, before anything is downloaded or trained.
 */
final class ExecuTorchRuntime {
    private ExecuTorchRuntime() {}

    /** What is missing, in words; empty when the runtime loads. */
    static List<String> missing() {
        List<String> out = new ArrayList<>();
        for (String cls : new String[] {
            "org.pytorch.executorch.Module", "com.facebook.jni.HybridData",
            "com.facebook.soloader.nativeloader.NativeLoader"}) {
            try {
                Class.forName(cls, false, ExecuTorchRuntime.class.getClassLoader());
            } catch (ClassNotFoundException e) {
                out.add("class " + cls);
            }
        }
        for (String lib : new String[] {"fbjni", "executorch"}) {
            try {
                System.loadLibrary(lib);
            } catch (UnsatisfiedLinkError e) {
                out.add("lib" + lib + ".so (" + e.getMessage() + ")");
            }
        }
        return out;
    }
}
