package org.cooperllm.core;

import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.DataOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.CRC32;

/**
 * Durable outbox for report batches: an append-only log of records, each forced to disk ({@link FileChannel#force})
 * before {@link #enqueue} returns, so a killed app, a crash or a dead network loses nothing that was enqueued. Acks
 * are appended as records too; a torn or corrupt tail (crash mid-write) is cut off on open. Every entry keeps its
 * idempotency key, so a retry after a restart is counted once by the server.
 *
 * <p>Record: magic "COBX", type (1 entry, 2 ack), u32 length, payload, u32 crc32(type ‖ payload); big-endian.
 * Entry payload: UTF key, i32 round, UTF-8 body (the rest). Ack payload: UTF key.
 */
public final class Outbox implements Closeable {
    private static final int MAGIC = 0x434F4258; // "COBX"
    private static final byte ENTRY = 1;
    private static final byte ACK = 2;
    private static final int MAX_RECORD = 64 << 20;

    /** One pending upload. */
    public static final class Entry {
        public final String key;
        public final int round;
        public final String body;

        Entry(String key, int round, String body) {
            this.key = key;
            this.round = round;
            this.body = body;
        }
    }

    private final File file;
    private RandomAccessFile raf;
    private FileChannel channel;
    private final Map<String, Entry> pending = new LinkedHashMap<>();
    private int ackedRecords;
    private long droppedTailBytes;

    private Outbox(File file) {
        this.file = file;
    }

    /** Opens (or creates) the outbox file, replays it, and cuts off a torn tail left by a crash. */
    public static synchronized Outbox open(File file) throws IOException {
        Outbox o = new Outbox(file);
        File parent = file.getAbsoluteFile().getParentFile();
        if (parent != null && !parent.isDirectory() && !parent.mkdirs()) throw new IOException("cannot create " + parent);
        o.raf = new RandomAccessFile(file, "rw");
        o.channel = o.raf.getChannel();
        o.replay();
        return o;
    }

    /** Bytes of a torn or corrupt tail dropped when the file was opened (0 after a clean shutdown). */
    public long droppedTailBytes() {
        return droppedTailBytes;
    }

    private void replay() throws IOException {
        long size = channel.size();
        ByteBuffer all = ByteBuffer.allocate((int) Math.min(size, Integer.MAX_VALUE));
        channel.read(all, 0);
        all.flip();
        long good = 0;
        while (all.remaining() >= 13) {
            int start = all.position();
            int magic = all.getInt();
            byte type = all.get();
            int len = all.getInt();
            if (magic != MAGIC || (type != ENTRY && type != ACK) || len < 0 || len > MAX_RECORD || all.remaining() < len + 4) {
                all.position(start);
                break;
            }
            byte[] payload = new byte[len];
            all.get(payload);
            int crc = all.getInt();
            if (crc != crc(type, payload)) {
                all.position(start);
                break;
            }
            apply(type, payload);
            good = all.position();
        }
        droppedTailBytes = size - good;
        if (droppedTailBytes > 0) {
            channel.truncate(good);
            channel.force(true);
        }
        channel.position(good);
    }

    private void apply(byte type, byte[] payload) {
        ByteBuffer b = ByteBuffer.wrap(payload);
        String key = readUtf(b);
        if (type == ENTRY) {
            int round = b.getInt();
            String body = new String(payload, b.position(), b.remaining(), StandardCharsets.UTF_8);
            pending.put(key, new Entry(key, round, body));
        } else if (pending.remove(key) != null) {
            ackedRecords++;
        }
    }

    private static String readUtf(ByteBuffer b) {
        int n = b.getShort() & 0xffff;
        byte[] s = new byte[n];
        b.get(s);
        return new String(s, StandardCharsets.UTF_8);
    }

    private static int crc(byte type, byte[] payload) {
        CRC32 c = new CRC32();
        c.update(type);
        c.update(payload, 0, payload.length);
        return (int) c.getValue();
    }

    private void append(byte type, byte[] payload) throws IOException {
        ByteBuffer rec = ByteBuffer.allocate(13 + payload.length);
        rec.putInt(MAGIC).put(type).putInt(payload.length).put(payload).putInt(crc(type, payload));
        rec.flip();
        while (rec.hasRemaining()) channel.write(rec);
        channel.force(true);
    }

    private static byte[] entryPayload(String key, int round, String body) throws IOException {
        ByteArrayOutputStream bo = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(bo);
        d.writeShort(checkKey(key).length);
        d.write(key.getBytes(StandardCharsets.UTF_8));
        d.writeInt(round);
        d.write(body.getBytes(StandardCharsets.UTF_8));
        return bo.toByteArray();
    }

    private static byte[] checkKey(String key) {
        byte[] k = key.getBytes(StandardCharsets.UTF_8);
        if (k.length == 0 || k.length > 128) throw new IllegalArgumentException("outbox key must be 1..128 bytes");
        return k;
    }

    /** Durably records an upload; returns once it is on disk. Enqueuing a key that is still pending is a no-op. */
    public synchronized void enqueue(String key, int round, String body) throws IOException {
        ensureOpen();
        if (pending.containsKey(key)) return;
        if ((long) body.length() * 3 > MAX_RECORD) throw new IllegalArgumentException("outbox entry too large");
        append(ENTRY, entryPayload(key, round, body));
        pending.put(key, new Entry(key, round, body));
    }

    /** Marks an upload done (delivered, or permanently refused); durable like enqueue. Unknown keys are ignored. */
    public synchronized void ack(String key) throws IOException {
        ensureOpen();
        if (!pending.containsKey(key)) return;
        byte[] k = checkKey(key);
        ByteBuffer p = ByteBuffer.allocate(2 + k.length);
        p.putShort((short) k.length).put(k);
        append(ACK, p.array());
        pending.remove(key);
        ackedRecords++;
        if (ackedRecords >= 256 && ackedRecords > 4 * pending.size()) compact();
    }

    /** Pending entries, oldest first. */
    public synchronized List<Entry> pending() {
        return Collections.unmodifiableList(new ArrayList<>(pending.values()));
    }

    public synchronized int size() {
        return pending.size();
    }

    /** Rewrites the log with only the pending entries: temp file, force, atomic rename. */
    public synchronized void compact() throws IOException {
        ensureOpen();
        File tmp = new File(file.getPath() + ".tmp");
        try (RandomAccessFile t = new RandomAccessFile(tmp, "rw"); FileChannel tc = t.getChannel()) {
            tc.truncate(0);
            for (Entry e : pending.values()) {
                byte[] payload = entryPayload(e.key, e.round, e.body);
                ByteBuffer rec = ByteBuffer.allocate(13 + payload.length);
                rec.putInt(MAGIC).put(ENTRY).putInt(payload.length).put(payload).putInt(crc(ENTRY, payload));
                rec.flip();
                while (rec.hasRemaining()) tc.write(rec);
            }
            tc.force(true);
        }
        channel.close();
        raf.close();
        if (!tmp.renameTo(file)) throw new IOException("cannot replace " + file + " with its compacted copy");
        raf = new RandomAccessFile(file, "rw");
        channel = raf.getChannel();
        channel.position(channel.size());
        ackedRecords = 0;
    }

    private void ensureOpen() throws IOException {
        if (channel == null || !channel.isOpen()) throw new IOException("outbox " + file + " is closed");
    }

    @Override
    public synchronized void close() throws IOException {
        if (channel != null) channel.close();
        if (raf != null) raf.close();
    }
}
