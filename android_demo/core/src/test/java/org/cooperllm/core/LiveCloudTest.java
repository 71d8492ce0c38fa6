package org.cooperllm.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.List;

/**
 * The protocol against the real Python cloud (uvicorn on 127.0.0.1, tiny model, SQLite), started by
 * tests/test_android_core.py, which passes -Dcooperllm.cloud=config.json. The Java device enrols, takes every round
 * of a zgr run (guidance downloaded and sha256-checked, subspace and complement reports from a toy quadratic loss,
 * durable outbox), survives an app restart with a batch still in its outbox, and follows the model by replay of the
 * published updates to the server's checksums.
 */
public class LiveCloudTest {
    private final Json.Obj cfg;

    public LiveCloudTest() throws IOException {
        String path = System.getProperty("cooperllm.cloud");
        if (path == null) throw new TestRunner.Skip("no -Dcooperllm.cloud (the live cloud is started by tests/test_android_core.py)");
        cfg = Json.parseObject(new String(Files.readAllBytes(new File(path).toPath()), StandardCharsets.UTF_8));
    }

    /** L(θ) = ½ Σ (θ_i − t_i)², t_i = 0.01·sin(i): a toy loss whose reports move θ somewhere definite. */
    static final class ToyLoss implements LossFunction {
        @Override
        public double loss(float[] theta, int step) {
            double s = 0;
            for (int i = 0; i < theta.length; i++) {
                double d = theta[i] - 0.01 * Math.sin(i);
                s += 0.5 * d * d;
            }
            return s;
        }

        @Override
        public int batchSize(int step) {
            return 4;
        }
    }

    /** POST with the admin token (the device client has no admin calls). */
    private static String adminPost(String url, String token, String path, String body) throws IOException {
        java.net.HttpURLConnection c = (java.net.HttpURLConnection) new java.net.URL(url + "/v1" + path).openConnection();
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        c.setRequestProperty("Authorization", "Bearer " + token);
        c.setRequestProperty("Content-Type", "application/json");
        c.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
        int status = c.getResponseCode();
        byte[] data = (status >= 400 ? c.getErrorStream() : c.getInputStream()).readAllBytes();
        if (status >= 400) throw new IOException("admin call failed: HTTP " + status + " " + new String(data, StandardCharsets.UTF_8));
        return new String(data, StandardCharsets.UTF_8);
    }

    private Protocol.RoundInfo waitFor(CooperClient api, int round) throws Exception {
        long deadline = System.currentTimeMillis() + 120_000;
        while (true) {
            Protocol.RoundInfo info = api.currentRound();
            if (info.round >= round || "failed".equals(info.status) || "finished".equals(info.status)) return info;
            if (System.currentTimeMillis() > deadline) throw new AssertionError("round " + round + " did not open");
            Thread.sleep(30);
        }
    }

    @Test
    public void javaDeviceFollowsAZgrRunByReplay() throws Exception {
        String url = cfg.getString("url");
        ParamLayout layout = ParamLayout.fromJson(cfg.getObj("manifest").getObj("layout"));
        File state = new File(cfg.getString("state_dir"));
        int rounds = cfg.getInt("rounds");
        Json.Obj health = new CooperClient(url, null, 10_000).health();
        Assert.eq("ok", health.getString("status"), "health");
        Assert.eq((long) Protocol.VERSION, health.getLong("protocol_version"), "the server speaks this core's protocol");

        // no token: a clear 401, not a crash
        try {
            new CooperClient(url, "not-a-token", 10_000).currentRound();
            throw new AssertionError("expected 401");
        } catch (CooperClient.ApiException e) {
            Assert.eq(401, e.status, "unauthenticated status");
            Assert.eq("missing or invalid bearer token", e.detail, "fixed error message");
        }

        CooperClient api = new CooperClient(url, null, 30_000);
        FederatedDevice dev = new FederatedDevice(api, layout, new ToyLoss(), state, null);
        dev.enroll(cfg.getString("enrolment_key"), "java-core");
        Assert.check(dev.deviceId() >= 0 && api.token() != null, "enrolled");

        // round 0: adapter download, guidance, a rejected batch, then the real one, then an idempotent re-upload
        Protocol.RoundInfo info = waitFor(api, 0);
        Assert.eq(0, info.round, "first round");
        Assert.eq("open", info.status, "round 0 open");
        Assert.eq(layout.blocks.size(), info.guidance.size(), "guidance for every block");
        Assert.eq(List.of(Direction.SUBSPACE, Direction.COMPLEMENT), info.directions, "zgr measures subspace, complement");
        try {
            api.uploadReports(0, "bad-seed", List.of(new Report(info.seedHi, info.blocks.get(0), 0, 0.5, 4)));
            throw new AssertionError("expected 422");
        } catch (CooperClient.ApiException e) {
            Assert.eq(422, e.status, "seed outside the device's range");
        }
        List<Report> r0 = dev.runRound(info, true);
        Assert.eq(info.localSteps * info.blocks.size() * 2, r0.size(), "one report per (step, block, direction)");
        for (int i = 0, nb = info.blocks.size(); i < r0.size(); i++) { // plan: batch t, block, direction j
            Report rep = r0.get(i);
            Assert.eq(info.seedLo + i, rep.seed, "seed of report " + i);
            Assert.eq(info.blocks.get(i / 2 % nb), rep.block, "block of report " + i);
            Assert.eq(i / (2 * nb) * 2 + i % 2, rep.step, "report " + i + ": step s = t·D + j");
        }
        Assert.eq(r0.size(), dev.reportsSent, "all accepted");
        Assert.eq(0, dev.outbox().size(), "outbox drained");
        Assert.eq(1, dev.downloads, "θ_0 downloaded once");
        String key = FederatedDevice.batchKey(dev.deviceId(), 0, r0);
        Protocol.ReportAck again = api.uploadReports(0, key, r0);
        Assert.check(again.replay && again.accepted == 0, "re-upload with the same key counts nothing");

        // round 1: compute, keep the batch in the outbox, "kill" the app, restart from disk, then upload
        info = waitFor(api, 1);
        Assert.eq(1, info.round, "second round");
        List<Report> r1 = dev.runRound(info, false);
        Assert.eq(1, dev.replays, "θ_1 by replay, no download");
        Assert.eq(1, dev.downloads, "still one download");
        Assert.eq(1, dev.outbox().size(), "batch waiting in the outbox");
        dev.close();
        CooperClient api2 = new CooperClient(url, null, 30_000);
        FederatedDevice restarted = new FederatedDevice(api2, layout, new ToyLoss(), state, null);
        Assert.eq(1, restarted.thetaRound(), "θ round restored");
        Assert.eq(info.thetaChecksum, Floats.thetaChecksum(restarted.theta()), "θ restored bit for bit");
        Assert.check(restarted.submitted(info), "knows round 1 was computed");
        Assert.eq(1, restarted.outbox().size(), "outbox restored");
        Assert.eq(0, restarted.drain(), "uploaded after restart");
        Assert.eq(r1.size(), restarted.reportsSent, "counted once");

        // remaining rounds, then follow the final update by replay
        for (int r = 2; r < rounds; r++) {
            info = waitFor(api2, r);
            Assert.eq(r, info.round, "round " + r);
            restarted.runRound(info, true);
        }
        info = waitFor(api2, rounds);
        Assert.eq("finished", info.status, "run finished");
        restarted.syncTo(info);
        Assert.eq(info.thetaChecksum, Floats.thetaChecksum(restarted.theta()), "final θ equals the server's");
        Assert.eq(0, restarted.downloads, "the restarted device never downloaded the adapter");
        Assert.eq(rounds - 1, restarted.replays, "rounds 1.." + (rounds - 1) + " replayed");
        String firstFinal = info.thetaChecksum;
        int replays1 = dev.replays + restarted.replays;
        int downloads1 = dev.downloads + restarted.downloads;

        // a second run (strategy zo, all blocks in one report): nothing carries over as "submitted", θ is re-fetched
        String created = adminPost(url, cfg.getString("admin_token"), "/admin/runs", "{\"strategy\":\"zo\",\"rounds\":2,"
                + "\"quorum\":1,\"min_devices\":1,\"local_steps\":3,\"blocks\":[-1],\"eta\":0.05,\"deadline_s\":120}");
        long run2 = Json.parseObject(created).getLong("run_id");
        Protocol.RoundInfo first2 = api2.currentRound();
        Assert.eq(run2, first2.runId, "second run is current");
        Assert.eq(0, first2.round, "second run starts at round 0");
        Assert.check(!restarted.submitted(first2), "round 0 of the new run is not taken as submitted");
        int downloadsBefore = restarted.downloads;
        Assert.eq(List.of(Direction.ISO), first2.directions, "zo measures plain Rademacher directions");
        List<Report> z = restarted.runRound(first2, true);
        Assert.eq(3, z.size(), "local_steps reports over all blocks");
        for (Report rep : z) Assert.eq(Report.ALL_BLOCKS, rep.block, "block -1");
        Assert.eq(downloadsBefore + 1, restarted.downloads, "θ of the new run downloaded");
        restarted.runRound(waitFor(api2, 1), true);
        Protocol.RoundInfo done2 = waitFor(api2, 2);
        Assert.eq("finished", done2.status, "second run finished");
        restarted.syncTo(done2);
        Assert.eq(done2.thetaChecksum, Floats.thetaChecksum(restarted.theta()), "second run's final θ by replay");

        String out = "{\"device_id\":" + restarted.deviceId() + ",\"final_checksum\":" + Json.quote(firstFinal)
                + ",\"run2\":" + run2 + ",\"run2_checksum\":" + Json.quote(done2.thetaChecksum)
                + ",\"replays\":" + replays1 + ",\"downloads\":" + downloads1
                + ",\"bytes_down\":" + (api.bytesDown() + api2.bytesDown()) + ",\"bytes_up\":" + (api.bytesUp() + api2.bytesUp()) + "}";
        Files.write(new File(cfg.getString("out")).toPath(), out.getBytes(StandardCharsets.UTF_8));
        restarted.close();
    }
}
