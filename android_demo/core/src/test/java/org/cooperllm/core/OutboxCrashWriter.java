package org.cooperllm.core;

import java.io.File;

/** Child process for OutboxTest: enqueues entries forever, printing each key once enqueue returned, until killed. */
public final class OutboxCrashWriter {
    public static void main(String[] args) throws Exception {
        Outbox o = Outbox.open(new File(args[0]));
        for (int i = 0; ; i++) {
            String key = "crash-" + i;
            o.enqueue(key, 3, "{\"idempotency_key\":\"" + key + "\",\"reports\":[]}" + "x".repeat(i % 97));
            if (i % 3 == 0) o.ack(key);
            System.out.println((i % 3 == 0 ? "acked " : "queued ") + key);
            System.out.flush();
        }
    }
}
