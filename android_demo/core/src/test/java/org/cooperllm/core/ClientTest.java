package org.cooperllm.core;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The uploader against a scripted local HTTP server (JDK httpserver): retries with backoff on 503/429, drops a batch
 * the server refuses for good (409: round closed), keeps it on 401, and survives a restart in between.
 */
public class ClientTest {
    private final List<Integer> script = new ArrayList<>();
    private final List<String> bodies = new ArrayList<>();
    private final AtomicInteger calls = new AtomicInteger();

    private HttpServer serve() throws IOException {
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        s.createContext("/v1/rounds/", (HttpExchange ex) -> {
            int i = calls.getAndIncrement();
            bodies.add(new String(ex.getRequestBody().readAllBytes(), StandardCharsets.UTF_8));
            int status = i < script.size() ? script.get(i) : 200;
            String body = status == 200
                    ? "{\"round\":3,\"accepted\":2,\"duplicates\":0,\"replay\":false,\"clipped\":0,\"round_status\":\"open\"}"
                    : status == 422 // as cloud_api/errors.py writes a schema error
                    ? "{\"detail\":\"request does not match the schema\",\"errors\":[{\"loc\":[\"body\",\"reports\",0,"
                            + "\"seed\"],\"msg\":\"Input should be greater than or equal to 0\",\"type\":\"greater_than_equal\"}]}"
                    : "{\"detail\":\"scripted " + status + "\"}";
            if (status == 429) ex.getResponseHeaders().add("Retry-After", "0.05");
            byte[] b = body.getBytes(StandardCharsets.UTF_8);
            ex.getResponseHeaders().add("Content-Type", "application/json");
            ex.sendResponseHeaders(status, b.length);
            try (OutputStream os = ex.getResponseBody()) {
                os.write(b);
            }
        });
        s.start();
        return s;
    }

    private static ParamLayout layout() {
        return ParamLayout.build(List.of("w"), List.of(new int[] {4}), List.of("b0"));
    }

    private static final LossFunction ZERO = new LossFunction() {
        @Override
        public double loss(float[] theta, int step) {
            return 0;
        }

        @Override
        public int batchSize(int step) {
            return 1;
        }
    };

    @Test
    public void retriesTransientErrorsThenDeliversOnce() throws Exception {
        script.addAll(List.of(503, 429, 200));
        HttpServer s = serve();
        File dir = Files.createTempDirectory("client").toFile();
        try {
            CooperClient api = new CooperClient("http://127.0.0.1:" + s.getAddress().getPort(), "tok", 5000);
            FederatedDevice d = new FederatedDevice(api, layout(), ZERO, dir, null);
            d.baseBackoffMs = 10;
            d.outbox().enqueue("k1", 3, Protocol.reportBatchJson("k1", List.of(new Report(5, 0, 0, 0.5, 2))));
            Assert.eq(0, d.drain(), "nothing left pending");
            Assert.eq(3, calls.get(), "two retries then success");
            Assert.eq(bodies.get(0), bodies.get(2), "a retry sends the same body (same idempotency key)");
            Assert.check(bodies.get(0).contains("\"idempotency_key\":\"k1\""), "key in body: " + bodies.get(0));
            Assert.eq(2, d.reportsSent, "accepted count");
            d.close();
        } finally {
            s.stop(0);
        }
    }

    @Test
    public void refusedBatchesAreDroppedButAuthFailuresKeepThem() throws Exception {
        script.addAll(List.of(409, 401));
        HttpServer s = serve();
        File dir = Files.createTempDirectory("client").toFile();
        try {
            CooperClient api = new CooperClient("http://127.0.0.1:" + s.getAddress().getPort(), "tok", 5000);
            FederatedDevice d = new FederatedDevice(api, layout(), ZERO, dir, null);
            d.outbox().enqueue("late", 1, Protocol.reportBatchJson("late", List.of(new Report(5, 0, 0, 0.5, 2))));
            d.outbox().enqueue("next", 2, Protocol.reportBatchJson("next", List.of(new Report(6, 0, 0, 0.5, 2))));
            try {
                d.drain();
                throw new AssertionError("a 401 must surface");
            } catch (CooperClient.ApiException e) {
                Assert.eq(401, e.status, "status");
                Assert.check(!e.retryable(), "401 is not retryable");
            }
            Assert.eq(1, d.outbox().size(), "the 409 batch is dropped, the 401 one kept");
            Assert.eq("next", d.outbox().pending().get(0).key, "kept batch");
            d.close();
            // restart: the kept batch is still there and goes out when the server accepts it
            FederatedDevice again = new FederatedDevice(api, layout(), ZERO, dir, null);
            Assert.eq(1, again.outbox().size(), "pending after restart");
            Assert.eq(0, again.drain(), "delivered after restart");
            again.close();
        } finally {
            s.stop(0);
        }
    }

    /** One upload against the scripted server answering ``status``: the exception the client raised. */
    private CooperClient.ApiException refusalOf(int status) throws Exception {
        script.add(status);
        HttpServer s = serve();
        try {
            CooperClient api = new CooperClient("http://127.0.0.1:" + s.getAddress().getPort(), "tok", 5000);
            try {
                api.uploadReports(0, "k", List.of(new Report(1, 0, 0, 1.0, 1)));
            } catch (CooperClient.ApiException e) {
                Assert.check(api.bytesUp() > 0 && api.bytesDown() > 0, "byte counters");
                return e;
            }
            throw new AssertionError("expected an ApiException");
        } finally {
            s.stop(0);
        }
    }

    @Test
    public void apiErrorsCarryStatusDetailAndRetryAfter() throws Exception {
        CooperClient.ApiException e = refusalOf(429);
        Assert.eq(429, e.status, "status");
        Assert.eq("scripted 429", e.detail, "detail");
        Assert.eq(0.05, e.retryAfterS, "retry-after");
        Assert.check(e.retryable(), "429 is retryable");
        Assert.check(e.fieldErrors.isEmpty(), "no field errors");
    }

    @Test
    public void aSchemaErrorNamesTheFieldsThatBrokeIt() throws Exception {
        CooperClient.ApiException e = refusalOf(422);
        Assert.eq(422, e.status, "status");
        Assert.eq("request does not match the schema", e.detail, "detail");
        Assert.eq(List.of("body.reports.0.seed: Input should be greater than or equal to 0"), e.fieldErrors, "fields");
        Assert.check(e.getMessage().contains("(body.reports.0.seed: "), e.getMessage());
        Assert.check(!e.retryable(), "422 is not retryable");
    }
}
