package org.cooperllm.core;

import java.util.Arrays;

/** Assertions for {@link TestRunner} tests. */
final class Assert {
    private Assert() {}

    static void check(boolean cond, String msg) {
        if (!cond) throw new AssertionError(msg);
    }

    static void eq(Object expected, Object actual, String what) {
        if (expected == null ? actual != null : !expected.equals(actual)) {
            throw new AssertionError(what + ": expected <" + expected + "> but was <" + actual + ">");
        }
    }

    static void bitsEq(float[] expected, float[] actual, String what) {
        if (expected.length != actual.length) throw new AssertionError(what + ": length " + actual.length + " != " + expected.length);
        for (int i = 0; i < expected.length; i++) {
            if (Float.floatToRawIntBits(expected[i]) != Float.floatToRawIntBits(actual[i])) {
                throw new AssertionError(what + "[" + i + "]: expected " + Floats.toHex(expected[i]) + " (" + expected[i]
                        + ") but was " + Floats.toHex(actual[i]) + " (" + actual[i] + ")");
            }
        }
    }

    static <T extends Throwable> T raises(Class<T> type, Runnable r, String what) {
        try {
            r.run();
        } catch (Throwable t) {
            if (type.isInstance(t)) return type.cast(t);
            throw new AssertionError(what + ": expected " + type.getSimpleName() + " but got " + t, t);
        }
        throw new AssertionError(what + ": expected " + type.getSimpleName() + ", nothing was thrown");
    }

    static String str(float[] v) {
        return Arrays.toString(v);
    }
}
