plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val executorchVersion: String by project
// -PexecutorchAar=/path/to/executorch.aar uses an AAR built from the same ExecuTorch release as the exporter instead.
val executorchAar: String? = findProperty("executorchAar") as String?

// The golden vectors of docs/PERTURBATIONS.md ship as an asset: the app checks its own arithmetic against them at
// start-up (PortabilityCheck) and the instrumented test does the same on a device or emulator.
val goldenAssets = layout.buildDirectory.dir("generated/goldenAssets")
val copyGolden by tasks.registering(Copy::class) {
    from(rootProject.file("../cooperllm/spec/perturbation_golden.json"))
    into(goldenAssets)
}
tasks.named("preBuild") { dependsOn(copyGolden) }

android {
    namespace = "org.cooperllm.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.cooperllm.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        ndk {
            // executorch-android ships these two ABIs
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    packaging {
        jniLibs.useLegacyPackaging = true
    }
    sourceSets.getByName("main").assets.srcDir(goldenAssets)
}

dependencies {
    implementation(project(":core"))
    if (executorchAar != null) {
        implementation(files(executorchAar))
        // what the Maven artifact would bring transitively
        implementation("com.facebook.soloader:soloader:0.10.5")
        implementation("com.facebook.fbjni:fbjni:0.5.1")
    } else {
        implementation("org.pytorch:executorch-android:$executorchVersion")
    }
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.core:core-ktx:1.13.1")
    implementation("androidx.work:work-runtime-ktx:2.9.1")
    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("androidx.test:runner:1.6.2")
}
