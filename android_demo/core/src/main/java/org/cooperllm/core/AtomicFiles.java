package org.cooperllm.core;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.RandomAccessFile;

/** Write-temp, fsync, rename: readers (and the app after a crash) see the old file or the new one, never half. */
public final class AtomicFiles {
    private AtomicFiles() {}

    public static void write(File target, byte[] data) throws IOException {
        File dir = target.getAbsoluteFile().getParentFile();
        if (dir != null && !dir.isDirectory() && !dir.mkdirs()) throw new IOException("cannot create " + dir);
        File tmp = new File(dir, "." + target.getName() + ".tmp");
        try (FileOutputStream out = new FileOutputStream(tmp)) {
            out.write(data);
            out.getChannel().force(true);
        }
        if (!tmp.renameTo(target)) {
            if (!target.delete() || !tmp.renameTo(target)) throw new IOException("cannot replace " + target);
        }
    }

    public static byte[] read(File f) throws IOException {
        try (RandomAccessFile r = new RandomAccessFile(f, "r")) {
            if (r.length() > Integer.MAX_VALUE - 8) throw new IOException(f + " is too large");
            byte[] b = new byte[(int) r.length()];
            r.readFully(b);
            return b;
        }
    }
}
