package org.cooperllm.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;

/** Byte-level helpers: little-endian binary32, hex bit patterns (the golden files' notation), SHA-256. */
public final class Floats {
    private Floats() {}

    public static byte[] toLittleEndian(float[] v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) b.putFloat(x);
        return b.array();
    }

    public static float[] fromLittleEndian(byte[] data, int off, int count) {
        if (off < 0 || count < 0 || (long) off + 4L * count > data.length) {
            throw new IllegalArgumentException("buffer too short for " + count + " float32 values");
        }
        ByteBuffer b = ByteBuffer.wrap(data, off, 4 * count).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[count];
        for (int i = 0; i < count; i++) out[i] = b.getFloat();
        return out;
    }

    /** sha256 of θ's little-endian binary32 bytes: the round-by-round model fingerprint (theta_checksum). */
    public static String thetaChecksum(float[] theta) {
        return sha256Hex(toLittleEndian(theta));
    }

    public static String sha256Hex(byte[] data) {
        return hex(sha256(data));
    }

    public static byte[] sha256(byte[] data) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(data);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 unavailable", e);
        }
    }

    public static String hex(byte[] b) {
        StringBuilder s = new StringBuilder(2 * b.length);
        for (byte x : b) s.append(String.format("%02x", x & 0xff));
        return s.toString();
    }

    /** float32 values from 8-hex-digit IEEE bit patterns. */
    public static float[] fromHex(List<Object> items) {
        float[] out = new float[items.size()];
        for (int i = 0; i < out.length; i++) out[i] = Float.intBitsToFloat((int) Long.parseLong((String) items.get(i), 16));
        return out;
    }

    public static String toHex(float v) {
        return String.format("%08x", Float.floatToRawIntBits(v));
    }
}
