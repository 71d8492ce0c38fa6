// Android demo: a pure-JVM core (built and tested on a plain JDK, see core/build.sh) and the app shell around it.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "cooperllm-android-demo"
include(":core", ":app")
