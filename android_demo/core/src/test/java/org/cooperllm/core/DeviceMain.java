package org.cooperllm.core;

import java.io.File;
import java.util.ArrayList;
import java.util.List;

/**
 * The Java core as one device process, for real rounds beside Python devices (tests/device_runtime/test_arm_round.py
 * runs it on an aarch64 JVM under qemu): enrol, take every open round of the current run with the toy quadratic
 * loss of {@link LiveCloudTest} (a JVM has no ExecuTorch runtime; the reports are real SPSA reports of that loss),
 * upload at once, follow θ by replay, and when the run finishes print one JSON line: the rounds taken, the reports
 * sent, replays and downloads, θ's checksum and the JVM's architecture.
 *
 * <p>Usage: {@code DeviceMain CLOUD_URL ENROLMENT_KEY STATE_DIR ARTIFACTS_DIR [TIMEOUT_S]}
 */
public final class DeviceMain {
    private DeviceMain() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: DeviceMain CLOUD_URL ENROLMENT_KEY STATE_DIR ARTIFACTS_DIR [TIMEOUT_S]");
            System.exit(2);
        }
        ArtifactManifest manifest = ArtifactManifest.read(new File(args[3]), true);
        long deadline = System.currentTimeMillis() + 1000L * (args.length > 4 ? Long.parseLong(args[4]) : 1200);
        FederatedDevice dev = new FederatedDevice(new CooperClient(args[0], null, 60_000), manifest.layout,
                new LiveCloudTest.ToyLoss(), new File(args[2]), null);
        dev.enroll(args[1], "java-" + System.getProperty("os.arch"));
        List<Integer> rounds = new ArrayList<>();
        int reports = 0;
        while (true) {
            if (System.currentTimeMillis() > deadline) throw new IllegalStateException("the run did not finish in time");
            Protocol.RoundInfo info = dev.currentRound();
            if ("failed".equals(info.status)) throw new IllegalStateException("the cloud's run failed");
            if ("finished".equals(info.status)) {
                dev.syncTo(info); // checks θ against the run's final checksum
                break;
            }
            if ("open".equals(info.status) && !dev.submitted(info)) {
                reports += dev.runRound(info, true).size();
                rounds.add(info.round);
            }
            Thread.sleep(50);
        }
        dev.close();
        StringBuilder rs = new StringBuilder();
        for (int r : rounds) rs.append(rs.length() == 0 ? "" : ",").append(r);
        System.out.println("{\"rounds\":[" + rs + "],\"reports\":" + reports + ",\"replays\":" + dev.replays
                + ",\"downloads\":" + dev.downloads + ",\"theta_checksum\":" + Json.quote(Floats.thetaChecksum(dev.theta()))
                + ",\"os_arch\":" + Json.quote(System.getProperty("os.arch")) + "}");
    }
}
