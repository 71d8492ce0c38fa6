package org.cooperllm.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * API v1 client over {@link HttpURLConnection} (available on Android and every JVM; java.net.http is not on
 * Android). One method per endpoint; non-2xx answers raise {@link ApiException} with the server's fixed detail and
 * Retry-After, and {@link ApiException#retryable()} tells the uploader whether to back off or give up.
 */
public final class CooperClient {
    private static final int MAX_BODY = 256 << 20;

    private final String base;
    private volatile String token;
    private final int timeoutMs;
    private long bytesDown;
    private long bytesUp;

    /** A non-2xx answer. */
    public static final class ApiException extends IOException {
        private static final long serialVersionUID = 1L;
        public final int status;
        public final String detail;
        public final double retryAfterS;
        /** For a 422 that broke the schema: "where: why" per field (ErrorBody.errors), e.g. "body.reports.0.seed: …". */
        public final List<String> fieldErrors;

        public ApiException(int status, String detail, double retryAfterS) {
            this(status, detail, retryAfterS, java.util.Collections.<String>emptyList());
        }

        public ApiException(int status, String detail, double retryAfterS, List<String> fieldErrors) {
            super("HTTP " + status + ": " + detail + (fieldErrors.isEmpty() ? "" : " (" + String.join("; ", fieldErrors) + ")"));
            this.status = status;
            this.detail = detail;
            this.retryAfterS = retryAfterS;
            this.fieldErrors = java.util.Collections.unmodifiableList(new java.util.ArrayList<>(fieldErrors));
        }

        /** 429 and 5xx: try again later; other 4xx: the request itself is wrong. */
        public boolean retryable() {
            return status == 429 || status >= 500;
        }
    }

    public CooperClient(String baseUrl, String token, int timeoutMs) {
        this.base = baseUrl.endsWith("/") ? baseUrl.substring(0, baseUrl.length() - 1) : baseUrl;
        this.token = token;
        this.timeoutMs = timeoutMs;
    }

    public void setToken(String t) {
        this.token = t;
    }

    public String token() {
        return token;
    }

    public synchronized long bytesDown() {
        return bytesDown;
    }

    public synchronized long bytesUp() {
        return bytesUp;
    }

    private static final class Response {
        final byte[] body;
        final HttpURLConnection conn;

        Response(byte[] body, HttpURLConnection conn) {
            this.body = body;
            this.conn = conn;
        }

        String text() {
            return new String(body, StandardCharsets.UTF_8);
        }
    }

    private Response request(String method, String path, String contentType, byte[] body) throws IOException {
        HttpURLConnection c = (HttpURLConnection) new URL(base + "/v1" + path).openConnection();
        try {
            c.setRequestMethod(method);
            c.setConnectTimeout(timeoutMs);
            c.setReadTimeout(timeoutMs);
            c.setUseCaches(false);
            c.setRequestProperty("Accept", "application/json, application/octet-stream");
            if (token != null) c.setRequestProperty("Authorization", "Bearer " + token);
            if (body != null) {
                c.setDoOutput(true);
                c.setRequestProperty("Content-Type", contentType);
                c.setFixedLengthStreamingMode(body.length);
                try (OutputStream os = c.getOutputStream()) {
                    os.write(body);
                }
                synchronized (this) {
                    bytesUp += body.length;
                }
            }
            int status = c.getResponseCode();
            InputStream in = status >= 400 ? c.getErrorStream() : c.getInputStream();
            byte[] data = in == null ? new byte[0] : readAll(in);
            synchronized (this) {
                bytesDown += data.length;
            }
            if (status >= 400) {
                String detail = data.length > 0 ? new String(data, StandardCharsets.UTF_8) : String.valueOf(c.getResponseMessage());
                List<String> fieldErrors = new java.util.ArrayList<>();
                try {
                    Json.Obj error = Json.parseObject(detail);
                    Object d = error.get("detail");
                    detail = d instanceof String ? (String) d : String.valueOf(d);
                    if (error.has("errors")) {
                        for (Object e : error.getList("errors")) fieldErrors.add(fieldError(e));
                    }
                } catch (IllegalArgumentException ignored) {
                    // not JSON, or not an ErrorBody: keep the raw text (and what was read of it)
                }
                String ra = c.getHeaderField("Retry-After");
                double retry = -1;
                if (ra != null) {
                    try {
                        retry = Double.parseDouble(ra.trim());
                    } catch (NumberFormatException ignored) {
                        retry = -1;
                    }
                }
                throw new ApiException(status, detail, retry, fieldErrors);
            }
            return new Response(data, c);
        } finally {
            c.disconnect();
        }
    }

    private static byte[] readAll(InputStream in) throws IOException {
        try (InputStream s = in) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = s.read(buf)) > 0) {
                out.write(buf, 0, n);
                if (out.size() > MAX_BODY) throw new IOException("response body over " + MAX_BODY + " bytes");
            }
            return out.toByteArray();
        }
    }

    private Json.Obj json(String method, String path, String body) throws IOException {
        Response r = request(method, path, "application/json", body == null ? null : body.getBytes(StandardCharsets.UTF_8));
        return Json.parseObject(r.text());
    }

    /** POST /v1/enroll: trades the enrolment key for a per-device token (kept by this client). Returns device_id. */
    public long enroll(String enrolmentKey, String deviceName) throws IOException {
        Json.Obj j = json("POST", "/enroll", "{\"enrolment_key\":" + Json.quote(enrolmentKey) + ",\"device_name\":"
                + Json.quote(deviceName) + "}");
        token = j.getString("token");
        return j.getLong("device_id");
    }

    public Protocol.RoundInfo currentRound() throws IOException {
        return new Protocol.RoundInfo(json("GET", "/rounds/current", null));
    }

    /** GET /v1/rounds/{r}/guidance/{b}: the raw frame (its sha256 is in the round's guidance list). */
    public byte[] guidanceFrame(int round, int block) throws IOException {
        return request("GET", "/rounds/" + round + "/guidance/" + block, null, null).body;
    }

    /** POST /v1/rounds/{r}/reports with an idempotency key: safe to retry, counted once. */
    public Protocol.ReportAck uploadReports(int round, String idempotencyKey, List<Report> reports) throws IOException {
        return uploadReportBatch(round, Protocol.reportBatchJson(idempotencyKey, reports));
    }

    /** The same with a batch body already serialised (what the outbox stores). */
    public Protocol.ReportAck uploadReportBatch(int round, String batchJson) throws IOException {
        return new Protocol.ReportAck(json("POST", "/rounds/" + round + "/reports", batchJson));
    }

    public Protocol.ModelSync sync(int round) throws IOException {
        return new Protocol.ModelSync(json("GET", "/rounds/" + round + "/sync", null));
    }

    /** GET /v1/adapter?version=v: θ at the start of round v as safetensors. */
    public byte[] adapter(int version) throws IOException {
        return request("GET", "/adapter?version=" + version, null, null).body;
    }

    public Json.Obj health() throws IOException {
        return json("GET", "/health", null);
    }

    /** One entry of ErrorBody.errors as "loc.joined.by.dots: msg". */
    private static String fieldError(Object entry) {
        Json.Obj e = Json.obj(entry, "an entry of 'errors'");
        StringBuilder where = new StringBuilder();
        for (Object part : e.getList("loc")) where.append(where.length() == 0 ? "" : ".").append(part);
        return where + ": " + e.getString("msg");
    }
}
