package org.cooperllm.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * API v1 bodies of protocol version 3 (cooperllm/protocol.py) as read by the device; unknown fields are ignored (so
 * the display-only ModelSync.lam is), missing ones fail.
 */
public final class Protocol {
    /** The protocol this core speaks (cooperllm.protocol.PROTOCOL_VERSION; GET /v1/health names the server's). */
    public static final int VERSION = 3;

    private Protocol() {}

    /** One block's guidance as advertised by a round. */
    public static final class GuidanceRef {
        public final int block;
        public final String guidanceId;
        public final String sha256;
        public final int rows;
        public final int m;

        GuidanceRef(Json.Obj j) {
            block = j.getInt("block");
            guidanceId = j.getString("guidance_id");
            sha256 = j.getString("sha256");
            rows = j.getInt("rows");
            m = j.getInt("m");
        }
    }

    /** GET /v1/rounds/current as seen by this device. */
    public static final class RoundInfo {
        public final long runId;
        public final int round;
        public final String status;
        public final String strategy;
        public final double epsilon;
        public final int localSteps;
        public final List<Integer> blocks;
        /** What each measurement perturbs along: step s of a block measures directions[s mod D] on batch s div D. */
        public final List<Direction> directions;
        public final int batchSize;
        public final double deadline;
        public final long seedLo;
        public final long seedHi;
        public final String thetaChecksum;
        public final int adapterVersion;
        public final List<GuidanceRef> guidance;
        public final int roundsTotal;
        /** sha256 of the run's artifact files by name (manifest.json, model.pte, …). */
        public final Map<String, String> artifactHashes;

        public RoundInfo(Json.Obj j) {
            runId = j.getLong("run_id");
            round = j.getInt("round");
            status = j.getString("status");
            strategy = j.getString("strategy");
            epsilon = j.getDouble("epsilon");
            localSteps = j.getInt("local_steps");
            List<Integer> b = new ArrayList<>();
            for (Object o : j.getList("blocks")) b.add(Math.toIntExact((Long) o));
            blocks = Collections.unmodifiableList(b);
            List<Direction> d = new ArrayList<>();
            for (Object o : j.getList("directions")) d.add(Direction.fromWire(String.valueOf(o)));
            directions = Collections.unmodifiableList(d);
            batchSize = j.getInt("batch_size");
            deadline = j.getDouble("deadline");
            seedLo = j.getLong("seed_lo");
            seedHi = j.getLong("seed_hi");
            thetaChecksum = j.getString("theta_checksum");
            adapterVersion = j.getInt("adapter_version");
            List<GuidanceRef> g = new ArrayList<>();
            for (Object o : j.getList("guidance")) g.add(new GuidanceRef(Json.obj(o, "guidance ref")));
            guidance = Collections.unmodifiableList(g);
            roundsTotal = j.getInt("rounds_total");
            Map<String, String> h = new TreeMap<>();
            for (Map.Entry<String, Object> e : j.getObj("artifact_hashes").asMap().entrySet()) {
                h.put(e.getKey(), String.valueOf(e.getValue()));
            }
            artifactHashes = Collections.unmodifiableMap(h);
        }
    }

    /** POST /v1/rounds/{r}/reports answer. */
    public static final class ReportAck {
        public final int round;
        public final int accepted;
        public final int duplicates;
        public final boolean replay;
        public final String roundStatus;

        public ReportAck(Json.Obj j) {
            round = j.getInt("round");
            accepted = j.getInt("accepted");
            duplicates = j.getInt("duplicates");
            replay = j.getBool("replay");
            roundStatus = j.getString("round_status");
        }
    }

    /** One block's guidance in a closed round's sync: which frame, and the coefficients c = Vᵀ g. */
    public static final class SyncGuidance {
        public final int block;
        public final String guidanceId;
        public final String sha256;
        public final float[] coeffs;

        SyncGuidance(Json.Obj j) {
            block = j.getInt("block");
            guidanceId = j.getString("guidance_id");
            sha256 = j.getString("sha256");
            coeffs = floats(j.getList("coeffs"));
        }
    }

    /**
     * GET /v1/rounds/{r}/sync: everything needed to replay θ_r → θ_{r+1} with {@link RoundReplay#applyUpdate},
     * including the round's own directions (a zgr run may give a round's whole budget to the complement).
     */
    public static final class ModelSync {
        public final long runId;
        public final int round;
        public final String strategy;
        public final boolean replayable;
        /** What the round's measurements perturbed along: step s of a block measured directions[s mod D]. */
        public final List<Direction> directions;
        public final List<Report> reports;
        public final List<SyncGuidance> guidance;
        /** The published update by block (ModelSync.update: q, and w or null). */
        public final Map<Integer, BlockUpdate> update;
        public final String checksumBefore;
        public final String checksumAfter;

        public ModelSync(Json.Obj j) {
            runId = j.getLong("run_id");
            round = j.getInt("round");
            strategy = j.getString("strategy");
            replayable = j.getBool("replayable");
            List<Direction> d = new ArrayList<>();
            for (Object o : j.getList("directions")) d.add(Direction.fromWire(String.valueOf(o)));
            directions = Collections.unmodifiableList(d);
            List<Report> r = new ArrayList<>();
            for (Object o : j.getList("reports")) r.add(Report.fromJson(o));
            reports = Collections.unmodifiableList(r);
            List<SyncGuidance> g = new ArrayList<>();
            for (Object o : j.getList("guidance")) g.add(new SyncGuidance(Json.obj(o, "sync guidance")));
            guidance = Collections.unmodifiableList(g);
            update = updates(j.getList("update"));
            checksumBefore = j.getString("theta_checksum_before");
            checksumAfter = j.getString("theta_checksum_after");
        }
    }

    /** ModelSync.update (a list of SyncUpdate: block, q, w or null) by block. */
    static Map<Integer, BlockUpdate> updates(List<Object> items) {
        Map<Integer, BlockUpdate> out = new TreeMap<>();
        for (Object o : items) {
            Json.Obj e = Json.obj(o, "sync update");
            BlockUpdate u = new BlockUpdate(e.getDouble("q"), e.has("w") ? floats(e.getList("w")) : null);
            if (out.put(e.getInt("block"), u) != null) throw new Json.JsonException("update names block " + e.getInt("block") + " twice");
        }
        return Collections.unmodifiableMap(out);
    }

    /** JSON numbers that are exact binary32 values (Python writes a float32 as the double of the same value). */
    static float[] floats(List<Object> items) {
        float[] out = new float[items.size()];
        for (int i = 0; i < out.length; i++) out[i] = (float) number(items.get(i));
        return out;
    }

    static double number(Object o) {
        if (o instanceof Long) return (Long) o;
        if (o instanceof Double) return (Double) o;
        throw new Json.JsonException("expected a number");
    }

    /** The body of POST /v1/rounds/{r}/reports. */
    public static String reportBatchJson(String idempotencyKey, List<Report> reports) {
        StringBuilder b = new StringBuilder("{\"idempotency_key\":").append(Json.quote(idempotencyKey)).append(",\"reports\":[");
        for (int i = 0; i < reports.size(); i++) b.append(i > 0 ? "," : "").append(reports.get(i).toJson());
        return b.append("]}").toString();
    }
}
