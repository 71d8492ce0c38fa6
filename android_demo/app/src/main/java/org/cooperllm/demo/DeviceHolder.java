package org.cooperllm.demo;

import android.content.Context;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import org.cooperllm.core.ArtifactManifest;
import org.cooperllm.core.CooperClient;
import org.cooperllm.core.DeviceData;
import org.cooperllm.core.FederatedDevice;
import org.cooperllm.core.LossFunction;
import org.cooperllm.core.PortabilityCheck;

/**
 * The one {@link FederatedDevice} of the process: the training service and the upload job share it (and so share
 * one outbox file handle); every use goes through {@link #use}, which serialises them. The ExecuTorch module is
 * loaded lazily, on the first forward pass, so an upload-only wake-up never maps the model.
 */
final class DeviceHolder {
    static final String GOLDEN_ASSET = "perturbation_golden.json";

    /** What a caller does with the device. */
    interface Action<T> {
        T run(FederatedDevice device, ArtifactManifest manifest) throws Exception;
    }

    private static FederatedDevice device;
    private static LazyLoss loss;
    private static ArtifactManifest manifest;
    private static String key;
    private static boolean portable;

    private DeviceHolder() {}

    static synchronized <T> T use(Context context, Action<T> action) throws Exception {
        DemoSettings settings = DemoSettings.load(context);
        File artifacts = DemoSettings.artifactsDir(context);
        String k = settings.serverUrl + "|" + artifacts.getPath();
        if (device == null || !k.equals(key)) {
            close();
            checkPortability(context);
            // sha256 of every artifact file, once per process and settings, before the model is ever loaded
            ArtifactManifest m = ArtifactManifest.read(artifacts, true);
            final LazyLoss l = new LazyLoss(m, DemoSettings.dataDir(context));
            FederatedDevice d = new FederatedDevice(new CooperClient(settings.serverUrl, null, 60_000), m.layout, l,
                    DemoSettings.stateDir(context, settings.serverUrl), ProgressStore.INSTANCE);
            d.setLocalArtifacts(m.fileHashes());
            d.setEvaluator(new FederatedDevice.Evaluator() {
                @Override
                public double accuracy(float[] theta) throws Exception {
                    return l.accuracy(theta);
                }
            });
            device = d;
            loss = l;
            manifest = m;
            key = k;
        }
        return action.run(device, manifest);
    }

    /** Once per process: this VM must reproduce the golden perturbations and replay bit for bit, or not train. */
    private static void checkPortability(Context context) throws IOException {
        if (portable) return;
        ByteArrayOutputStream text = new ByteArrayOutputStream();
        try (InputStream in = context.getAssets().open(GOLDEN_ASSET)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) text.write(buf, 0, n);
        }
        List<String> bad = PortabilityCheck.verify(new String(text.toByteArray(), StandardCharsets.UTF_8));
        if (!bad.isEmpty()) {
            throw new IllegalStateException("this device's arithmetic differs from docs/PERTURBATIONS.md: " + bad);
        }
        portable = true;
    }

    static synchronized void close() throws IOException {
        if (device != null) device.close();
        if (loss != null) loss.close();
        device = null;
        loss = null;
        manifest = null;
        key = null;
    }

    /** The graph, opened on the first forward pass. */
    private static final class LazyLoss implements LossFunction, AutoCloseable {
        private final ArtifactManifest manifest;
        private final File dataDir;
        private ExecuTorchLoss impl;

        LazyLoss(ArtifactManifest manifest, File dataDir) {
            this.manifest = manifest;
            this.dataDir = dataDir;
        }

        private ExecuTorchLoss get() throws Exception {
            if (impl != null) return impl;
            ArtifactManifest.Graph graph = manifest.graph("pte");
            DeviceData shuffled = DeviceData.read(new File(dataDir, "train.safetensors"), 0);
            // a graph with length buckets: batches formed by length, so most run in a smaller bucket (GraphInputs)
            DeviceData train = graph.lengths.length > 1 ? shuffled.groupedByLength(graph.batchSize, 0) : shuffled;
            File evalFile = new File(dataDir, "eval.safetensors");
            DeviceData eval = evalFile.isFile() ? DeviceData.read(evalFile, 1) : null;
            impl = new ExecuTorchLoss(manifest, train, eval);
            return impl;
        }

        @Override
        public double loss(float[] theta, int step) throws Exception {
            return get().loss(theta, step);
        }

        @Override
        public int batchSize(int step) {
            return manifest.graph("pte").batchSize;
        }

        double accuracy(float[] theta) throws Exception {
            return get().accuracy(theta);
        }

        @Override
        public void close() {
            if (impl != null) impl.close();
            impl = null;
        }
    }
}
