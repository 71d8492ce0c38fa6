package org.cooperllm.core;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;

/**
 * Writes the exact inputs the app hands to ExecuTorch for one training batch (GraphInputs over a real exported
 * artifact and a device data file) so the pytest integration test can run them through the real .pte with
 * ExecuTorch's Python runtime and compare with the Python device backend.
 */
public class GraphCallTest {
    @Test
    public void writeTheInputsOfOneCall() throws IOException {
        String a = System.getProperty("cooperllm.graph_artifacts");
        if (a == null) throw new TestRunner.Skip("no -Dcooperllm.graph_artifacts (integration test in tests/test_android_core.py)");
        ArtifactManifest m = ArtifactManifest.read(new File(a), true);
        ArtifactManifest.Graph g = m.graph("pte");
        DeviceData d = DeviceData.read(new File(System.getProperty("cooperllm.device_data")), 0);
        float[] theta = Safetensors.readTheta(Files.readAllBytes(m.resolve(m.initialAdapterFile).toPath()), m.layout);
        byte[] f = Safetensors.writeInputs(GraphInputs.build(m, g, d.batch(1, g.batchSize), theta));
        Files.write(new File(System.getProperty("cooperllm.out")).toPath(), f);
    }
}
