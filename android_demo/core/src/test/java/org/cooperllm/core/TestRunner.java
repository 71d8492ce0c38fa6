package org.cooperllm.core;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/**
 * A tiny test harness: runs every {@link Test} method of the classes named on the command line (a fresh instance per
 * test), prints one line per test and ends with "N passed, N failed, N skipped". Exit code 0 only when none failed.
 */
public final class TestRunner {
    /** Thrown by a test whose precondition (a fixture, a live server) was not provided. */
    public static final class Skip extends RuntimeException {
        private static final long serialVersionUID = 1L;

        public Skip(String why) {
            super(why);
        }
    }

    public static void main(String[] args) throws Exception {
        int passed = 0, failed = 0, skipped = 0;
        String only = System.getProperty("cooperllm.test.only");
        // which JVM ran the suite (the host's, or an aarch64 one under qemu: tests/test_android_core.py checks it)
        System.out.println("JVM " + System.getProperty("java.vm.name") + " " + System.getProperty("java.version")
                + ", os.arch " + System.getProperty("os.arch"));
        for (String name : args) {
            Class<?> cls = Class.forName(name);
            List<Method> methods = new ArrayList<>();
            for (Method m : cls.getDeclaredMethods()) if (m.isAnnotationPresent(Test.class)) methods.add(m);
            methods.sort(Comparator.comparing(Method::getName));
            for (Method m : methods) {
                String id = cls.getSimpleName() + "." + m.getName();
                if (only != null && !id.contains(only)) continue;
                long t0 = System.nanoTime();
                try {
                    Object inst = cls.getDeclaredConstructor().newInstance();
                    m.setAccessible(true);
                    m.invoke(inst);
                    passed++;
                    System.out.printf("PASS %s (%.0f ms)%n", id, (System.nanoTime() - t0) / 1e6);
                } catch (InvocationTargetException e) {
                    Throwable c = e.getCause();
                    if (c instanceof Skip) {
                        skipped++;
                        System.out.println("SKIP " + id + ": " + c.getMessage());
                    } else {
                        failed++;
                        System.out.println("FAIL " + id + ": " + c);
                        for (StackTraceElement el : Arrays.copyOf(c.getStackTrace(), Math.min(8, c.getStackTrace().length))) {
                            System.out.println("    at " + el);
                        }
                    }
                }
            }
        }
        System.out.println(passed + " passed, " + failed + " failed, " + skipped + " skipped");
        System.exit(failed == 0 && passed > 0 ? 0 : 1);
    }
}
