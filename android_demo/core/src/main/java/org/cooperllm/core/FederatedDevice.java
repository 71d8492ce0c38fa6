package org.cooperllm.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * One phone in a federated run (device_runtime/client.py, in Java): enrol, follow the global θ by replaying each
 * closed round (checksum-verified; the full adapter is downloaded only when replay is impossible or disagrees), fetch
 * the round's guidance (sha256-verified), run local_steps × blocks × directions SPSA reports at θ_r with seeds from
 * this device's range, put the batch in the durable outbox before any upload, and drain the outbox with retries.
 *
 * <p>Report step s = t·D + j of a block measures the round's directions[j] on batch t (D directions), so a zgr step
 * measures the subspace and the complement on the same examples. The loss function sees batch index
 * round·local_steps + t, so every round trains on fresh batches. State lives in {@code stateDir}: θ (safetensors), a
 * small JSON (round, device id, token) and the outbox, all written atomically, so a killed app resumes where it
 * stopped and never loses or double-counts a report.
 */
public final class FederatedDevice {
    private static final Logger LOG = Logger.getLogger(FederatedDevice.class.getName());

    /** What the screen shows. */
    public static final class Progress {
        public int round = -1;
        public int step;
        public int totalSteps;
        public double loss = Double.NaN;
        public double accuracy = Double.NaN;
        public long bytesUp;
        public long bytesDown;
        public int pendingUploads;
        public String status = "idle";
    }

    /** Receives progress after every step and state change (called on the training thread). */
    public interface Listener {
        void onProgress(Progress p);
    }

    /** Optional held-out accuracy of θ (the app runs the graph's label logits on a validation batch). */
    public interface Evaluator {
        double accuracy(float[] theta) throws Exception;
    }

    private final CooperClient api;
    private final ParamLayout layout;
    private final LossFunction loss;
    private final File stateDir;
    private final Outbox outbox;
    private final Listener listener;
    private final Progress progress = new Progress();
    private final Random jitter = new Random();
    private Evaluator evaluator;
    private Map<String, String> localArtifacts;
    private float[] theta;
    private int thetaRound = -1;
    private long thetaRun = -1;
    private long deviceId = -1;
    private int submittedRound = -1;
    private long submittedRun = -1;
    private final Map<String, BlockGuidance> basisCache = new HashMap<>();
    public int downloads;
    public int replays;
    public int reportsSent;
    public int maxRetries = 6;
    public long baseBackoffMs = 200;

    public FederatedDevice(CooperClient api, ParamLayout layout, LossFunction loss, File stateDir, Listener listener)
            throws IOException {
        this.api = api;
        this.layout = layout;
        this.loss = loss;
        this.stateDir = stateDir;
        this.listener = listener;
        if (!stateDir.isDirectory() && !stateDir.mkdirs()) throw new IOException("cannot create " + stateDir);
        this.outbox = Outbox.open(new File(stateDir, "outbox.log"));
        load();
    }

    public void setEvaluator(Evaluator e) {
        this.evaluator = e;
    }

    /** The sha256 of this device's artifact files (ArtifactManifest.fileHashes()); checked against every round. */
    public void setLocalArtifacts(Map<String, String> hashes) {
        this.localArtifacts = hashes;
    }

    /** Every file both sides name must have the same sha256, else the device refuses to train on this run. */
    public void checkArtifacts(Protocol.RoundInfo info) {
        if (localArtifacts == null) return;
        List<String> bad = new ArrayList<>();
        int common = 0;
        for (Map.Entry<String, String> e : info.artifactHashes.entrySet()) {
            String mine = localArtifacts.get(e.getKey());
            if (mine == null) continue;
            common++;
            if (!mine.equals(e.getValue())) bad.add(e.getKey());
        }
        if (!bad.isEmpty()) {
            throw new IllegalStateException("artifact mismatch with the cloud for " + bad + ": refusing to train");
        }
        if (common == 0) LOG.warning("the cloud advertises no file this device has; cannot check artifact identity");
    }

    public float[] theta() {
        return theta;
    }

    public int thetaRound() {
        return thetaRound;
    }

    public long deviceId() {
        return deviceId;
    }

    public Outbox outbox() {
        return outbox;
    }

    /** GET /v1/rounds/current with this device's token. */
    public Protocol.RoundInfo currentRound() throws IOException {
        return api.currentRound();
    }

    public void close() throws IOException {
        outbox.close();
    }

    // --- persistence --------------------------------------------------------------------------------------------

    private File stateFile() {
        return new File(stateDir, "state.json");
    }

    private File thetaFile() {
        return new File(stateDir, "theta.safetensors");
    }

    private void load() throws IOException {
        if (!stateFile().isFile()) return;
        Json.Obj s = Json.parseObject(new String(AtomicFiles.read(stateFile()), StandardCharsets.UTF_8));
        deviceId = s.getLong("device_id");
        submittedRound = s.getInt("submitted_round");
        submittedRun = s.getLong("submitted_run");
        if (s.has("token") && api.token() == null) api.setToken(s.getString("token"));
        int r = s.getInt("theta_round");
        if (r >= 0 && thetaFile().isFile()) {
            float[] t = Safetensors.readTheta(AtomicFiles.read(thetaFile()), layout);
            if (Floats.thetaChecksum(t).equals(s.getString("theta_checksum"))) {
                theta = t;
                thetaRound = r;
                thetaRun = s.getLong("theta_run");
            } else {
                LOG.warning("stored θ does not match its checksum: it will be downloaded again");
            }
        }
    }

    private void save() throws IOException {
        if (theta != null) AtomicFiles.write(thetaFile(), Safetensors.writeTheta(theta, layout));
        String json = "{\"device_id\":" + deviceId + ",\"submitted_round\":" + submittedRound + ",\"submitted_run\":"
                + submittedRun + ",\"theta_round\":" + thetaRound + ",\"theta_run\":" + thetaRun + ",\"theta_checksum\":" + Json.quote(theta == null ? "" : Floats.thetaChecksum(theta))
                + (api.token() == null ? "" : ",\"token\":" + Json.quote(api.token())) + "}";
        AtomicFiles.write(stateFile(), json.getBytes(StandardCharsets.UTF_8));
    }

    private void emit(String status) {
        progress.status = status;
        progress.bytesUp = api.bytesUp();
        progress.bytesDown = api.bytesDown();
        progress.pendingUploads = outbox.size();
        if (listener != null) listener.onProgress(progress);
    }

    // --- enrolment and model sync -------------------------------------------------------------------------------

    /** Enrols once; a device restored from its state keeps its token and id. */
    public void enroll(String enrolmentKey, String name) throws IOException {
        if (api.token() != null && deviceId >= 0) return;
        deviceId = api.enroll(enrolmentKey, name);
        save();
        emit("enrolled");
    }

    /** Brings θ to the start of info.round: replay from the θ held (verified), else download the adapter. */
    public void syncTo(Protocol.RoundInfo info) throws IOException {
        if (theta != null && thetaRun == info.runId && thetaRound == info.round
                && Floats.thetaChecksum(theta).equals(info.thetaChecksum)) {
            return;
        }
        boolean ok = false;
        if (theta != null && thetaRun == info.runId && thetaRound >= 0 && thetaRound < info.round) {
            float[] work = theta.clone();
            ok = true;
            try {
                for (int r = thetaRound; r < info.round && ok; r++) ok = replayRound(r, work);
            } catch (CooperClient.ApiException e) {
                if (e.status == 401 || e.status == 403 || e.retryable()) throw e;
                LOG.warning("replay impossible (" + e.getMessage() + "): downloading the adapter");
                ok = false;
            }
            if (ok && Floats.thetaChecksum(work).equals(info.thetaChecksum)) {
                theta = work;
                replays += info.round - thetaRound;
            } else {
                ok = false;
            }
        }
        if (!ok) {
            emit("downloading adapter");
            float[] t = Safetensors.readTheta(api.adapter(info.round), layout);
            if (!Floats.thetaChecksum(t).equals(info.thetaChecksum)) {
                throw new IOException("downloaded adapter for round " + info.round + " does not match the round's checksum");
            }
            theta = t;
            downloads++;
        }
        thetaRound = info.round;
        thetaRun = info.runId;
        save();
        if (evaluator != null) {
            try {
                progress.accuracy = evaluator.accuracy(theta);
            } catch (Exception e) {
                LOG.log(Level.WARNING, "evaluation failed", e);
            }
        }
        emit("synced to round " + info.round);
    }

    /**
     * θ_r → θ_{r+1} in place from the server's sync payload (its reports, guidance, update and the round's
     * directions); false when not replayable or the checksum disagrees.
     */
    public boolean replayRound(int round, float[] work) throws IOException {
        Protocol.ModelSync s = api.sync(round);
        if (!s.replayable) {
            LOG.info("round " + round + " (" + s.strategy + ") is not replayable: downloading the adapter");
            return false;
        }
        if (!Floats.thetaChecksum(work).equals(s.checksumBefore)) {
            LOG.warning("round " + round + ": held θ is not the round's starting θ");
            return false;
        }
        Map<Integer, BlockGuidance> g = new HashMap<>();
        for (Protocol.SyncGuidance sg : s.guidance) {
            BlockGuidance basis = basis(round, sg.block, sg.sha256);
            if (basis.m != sg.coeffs.length) throw new IOException("guidance coefficients do not match the basis");
            g.put(sg.block, basis.withCoeffs(sg.coeffs));
        }
        RoundReplay.applyUpdate(work, layout, s.reports, s.directions, g, s.update);
        boolean ok = Floats.thetaChecksum(work).equals(s.checksumAfter);
        if (!ok) LOG.warning("round " + round + ": replay disagrees with the server's checksum");
        return ok;
    }

    /**
     * The decoded basis of (round, block), checked against the advertised sha256 and downloaded once per version: a
     * block whose guidance version did not change since an earlier round (same sha256) is not downloaded again.
     */
    private BlockGuidance basis(int round, int block, String sha256) throws IOException {
        String key = block + ":" + sha256;
        BlockGuidance cached = basisCache.get(key);
        if (cached != null) return cached;
        byte[] frame = api.guidanceFrame(round, block);
        if (!Floats.sha256Hex(frame).equals(sha256)) throw new IOException("guidance frame for block " + block + " fails its sha256");
        Dtc.Tensor t = TensorFrames.decode(frame, 1L << 26);
        if (t.shape.length != 2 || t.shape[0] != layout.blocks.get(block).size) {
            throw new IOException("guidance for block " + block + " does not match the layout");
        }
        BlockGuidance g = new BlockGuidance(t.values, (int) t.shape[0], (int) t.shape[1], null);
        if (basisCache.size() > 64) basisCache.clear();
        basisCache.put(key, g);
        return g;
    }

    // --- one round ----------------------------------------------------------------------------------------------

    /** Whether this device already handed in its reports for the round (restored across restarts). */
    public boolean submitted(Protocol.RoundInfo info) {
        return submittedRun == info.runId && submittedRound >= info.round;
    }

    /**
     * Computes this device's reports for the open round at θ_r and puts them in the outbox (durable); then uploads
     * them unless {@code upload} is false (the caller drains later, e.g. when the network is unmetered).
     */
    public List<Report> runRound(Protocol.RoundInfo info, boolean upload) throws Exception {
        if (!"open".equals(info.status)) throw new IllegalStateException("round " + info.round + " is " + info.status);
        if ("bp".equals(info.strategy)) throw new IllegalStateException("strategy 'bp' needs backprop; this device runs ZO only");
        if (info.directions.isEmpty()) {
            throw new IllegalStateException("strategy '" + info.strategy + "' asks nothing of devices: its rounds are the cloud's alone");
        }
        checkArtifacts(info);
        syncTo(info);
        Map<Integer, BlockGuidance> guidance = new HashMap<>();
        for (Protocol.GuidanceRef ref : info.guidance) {
            BlockGuidance g = basis(info.round, ref.block, ref.sha256);
            if (g.rows != ref.rows || g.m != ref.m) throw new IOException("guidance for block " + ref.block + " has the wrong shape");
            guidance.put(ref.block, g);
        }
        // SPSA perturbs in place and restores only up to float rounding: work on a copy so θ_r stays bit-exact
        // for the replay of this round (the server's checksum_before).
        final int batchBase = info.round * info.localSteps; // fresh batches every round, one batch per local step
        LossFunction roundLoss = new LossFunction() {
            @Override
            public double loss(float[] th, int batch) throws Exception {
                return loss.loss(th, batchBase + batch);
            }

            @Override
            public int batchSize(int batch) {
                return loss.batchSize(batchBase + batch);
            }
        };
        ZoEngine engine = new ZoEngine(theta.clone(), layout, roundLoss, info.epsilon, guidance);
        int kinds = info.directions.size();
        int total = info.localSteps * info.blocks.size() * kinds;
        if (info.seedLo + total > info.seedHi) throw new IllegalStateException("the round needs more seeds than this device's range");
        progress.round = info.round;
        progress.totalSteps = total;
        List<Report> reports = new ArrayList<>();
        int idx = 0;
        for (int t = 0; t < info.localSteps; t++) {
            for (int block : info.blocks) {
                for (int j = 0; j < kinds; j++) {
                    try {
                        reports.add(engine.step(info.seedLo + idx, block, info.directions.get(j), t, t * kinds + j));
                        progress.loss = engine.lastLoss();
                    } catch (ZoEngine.NonFiniteLossException e) {
                        LOG.warning("round " + info.round + " step " + t + " block " + block + " dropped: " + e.getMessage());
                    }
                    idx++;
                    progress.step = idx;
                    emit("training");
                }
            }
        }
        if (!reports.isEmpty()) {
            String key = batchKey(deviceId, info.round, reports);
            outbox.enqueue(key, info.round, Protocol.reportBatchJson(key, reports));
        }
        submittedRound = info.round;
        submittedRun = info.runId;
        save();
        emit("queued " + reports.size() + " reports");
        if (upload) drain();
        return reports;
    }

    /** Idempotency key of a batch: the same reports always get the same key, so a re-upload is counted once. */
    public static String batchKey(long deviceId, int round, List<Report> reports) {
        byte[] body = Protocol.reportBatchJson("", reports).getBytes(StandardCharsets.UTF_8);
        return "d" + deviceId + "-r" + round + "-" + Floats.sha256Hex(body).substring(0, 24);
    }

    /**
     * Uploads every pending batch, oldest first. Delivered or permanently refused batches (a closed round: the
     * staleness rule drops them) leave the outbox; retryable failures back off exponentially with jitter and stay
     * pending after maxRetries. Returns the number of batches still pending.
     */
    public int drain() throws InterruptedException, IOException {
        for (Outbox.Entry e : outbox.pending()) {
            for (int attempt = 0; ; attempt++) {
                try {
                    Protocol.ReportAck ack = api.uploadReportBatch(e.round, e.body);
                    reportsSent += ack.accepted;
                    outbox.ack(e.key);
                    break;
                } catch (CooperClient.ApiException ex) {
                    if (ex.status == 401 || ex.status == 403) throw ex; // credentials: keep the batch, surface it
                    if (!ex.retryable()) {
                        LOG.warning("batch " + e.key + " refused for good (" + ex.getMessage() + "): dropped");
                        outbox.ack(e.key);
                        break;
                    }
                    if (attempt >= maxRetries) return outbox.size();
                    sleepBackoff(attempt, ex.retryAfterS);
                } catch (IOException ex) {
                    if (attempt >= maxRetries) return outbox.size();
                    sleepBackoff(attempt, -1);
                }
            }
            emit("uploaded");
        }
        return outbox.size();
    }

    private void sleepBackoff(int attempt, double retryAfterS) throws InterruptedException {
        long ms = (long) Math.min(30_000, baseBackoffMs * Math.pow(2, attempt));
        ms = ms / 2 + (long) (jitter.nextDouble() * ms / 2);
        if (retryAfterS > 0) ms = Math.max(ms, (long) (retryAfterS * 1000));
        Thread.sleep(ms);
    }
}
