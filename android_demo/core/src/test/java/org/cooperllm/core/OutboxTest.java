package org.cooperllm.core;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/** The durable outbox: entries survive close/reopen, a killed writer process and a torn tail. */
public class OutboxTest {
    private final File dir;

    public OutboxTest() throws IOException {
        dir = Files.createTempDirectory("outbox").toFile();
        dir.deleteOnExit();
    }

    private static List<String> keys(Outbox o) {
        List<String> k = new ArrayList<>();
        for (Outbox.Entry e : o.pending()) k.add(e.key);
        return k;
    }

    @Test
    public void entriesSurviveReopenUntilAcked() throws IOException {
        File f = new File(dir, "outbox.log");
        try (Outbox o = Outbox.open(f)) {
            o.enqueue("k1", 0, "{\"a\":1}");
            o.enqueue("k2", 0, "{\"a\":\"é\"}");
            o.enqueue("k1", 0, "{\"a\":1}"); // idempotent
            o.enqueue("k3", 1, "{}");
        }
        try (Outbox o = Outbox.open(f)) {
            Assert.eq(List.of("k1", "k2", "k3"), keys(o), "pending after reopen");
            Assert.eq("{\"a\":\"é\"}", o.pending().get(1).body, "body round-trips");
            Assert.eq(1, o.pending().get(2).round, "round kept");
            o.ack("k2");
            o.ack("nope");
        }
        try (Outbox o = Outbox.open(f)) {
            Assert.eq(List.of("k1", "k3"), keys(o), "ack is durable");
            Assert.eq(0L, o.droppedTailBytes(), "clean file");
            o.compact();
            Assert.eq(List.of("k1", "k3"), keys(o), "compaction keeps pending");
            o.enqueue("k4", 2, "{}");
        }
        try (Outbox o = Outbox.open(f)) {
            Assert.eq(List.of("k1", "k3", "k4"), keys(o), "after compaction + append");
        }
    }

    @Test
    public void tornTailIsCutOff() throws IOException {
        File f = new File(dir, "torn.log");
        try (Outbox o = Outbox.open(f)) {
            o.enqueue("a", 0, "{\"x\":1}");
            o.enqueue("b", 0, "{\"x\":2}");
        }
        long full = f.length();
        try (RandomAccessFile r = new RandomAccessFile(f, "rw")) {
            r.setLength(full - 3); // crash in the middle of the last record
        }
        try (Outbox o = Outbox.open(f)) {
            Assert.eq(List.of("a"), keys(o), "the torn record is dropped, the earlier one kept");
            Assert.check(o.droppedTailBytes() > 0, "tail reported");
            o.enqueue("c", 0, "{}");
        }
        try (RandomAccessFile r = new RandomAccessFile(f, "rw")) {
            r.seek(r.length());
            r.write("garbage that is not a record".getBytes(StandardCharsets.UTF_8));
        }
        try (Outbox o = Outbox.open(f)) {
            Assert.eq(List.of("a", "c"), keys(o), "garbage tail ignored");
        }
    }

    @Test
    public void nothingEnqueuedIsLostWhenTheProcessIsKilled() throws Exception {
        File f = new File(dir, "crash.log");
        // the writer runs on this JVM's java, or on -Dcooperllm.java (a command: the aarch64 JVM under qemu-user, whose
        // child must be started through qemu again; tests/test_android_core.py)
        List<String> cmd = new ArrayList<>(Arrays.asList(
                System.getProperty("cooperllm.java", System.getProperty("java.home") + "/bin/java").trim().split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "org.cooperllm.core.OutboxCrashWriter", f.getPath()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        Set<String> queued = new HashSet<>();
        Set<String> acked = new HashSet<>();
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null && queued.size() + acked.size() < 60) {
                String[] parts = line.split(" ");
                (parts[0].equals("acked") ? acked : queued).add(parts[1]);
            }
            p.destroyForcibly(); // SIGKILL mid-write: no shutdown hooks, no close
            p.waitFor();
        }
        Assert.check(queued.size() >= 30, "writer produced entries: " + queued.size());
        try (Outbox o = Outbox.open(f)) {
            Set<String> pending = new HashSet<>(keys(o));
            for (String k : queued) Assert.check(pending.contains(k), "enqueued entry " + k + " survived the kill");
            for (String k : acked) Assert.check(!pending.contains(k), "acked entry " + k + " stays acked");
        }
    }
}
