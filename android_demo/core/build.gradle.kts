// The pure-Java core: no Android imports, Java 8 API level (what core/build.sh compiles with --release 8).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

// The core's tests use their own harness (no JUnit jar needed): `./build.sh test` or `pytest tests/test_android_core.py`.
val coreTest by tasks.registering(Exec::class) {
    group = "verification"
    description = "Compile and run the core's JVM tests with core/build.sh"
    workingDir = projectDir
    commandLine("bash", "build.sh", "test", "GoldenTest", "ZoTest", "OutboxTest", "SafetensorsTest", "ClientTest")
}
