#!/usr/bin/env bash
# `make android`: the demo app as a signed APK, without Gradle or an Android SDK, from registry packages only
# (android_demo/tools/toolchain.sh). Steps: the Java core (javac, Java 8), R.java and the app (javac against API 23's
# android.jar), ExecuTorch's Java API (the pinned npm package's classes), one classes.dex (dx), resources, manifest
# and assets (aapt), native libraries for arm64-v8a and x86_64, zipalign, and apksigner with a debug key generated
# on first use. Output: build/android/cooperllm-demo.apk (override the folder with ANDROID_BUILD_DIR).
#
# ANDROID_EXTRA (optional, colon-separated): more .jar/.aar files to put in the APK — their classes are dexed with
# the app's and an .aar's jni/<abi>/*.so go to lib/<abi>/. This is how the runtime's missing pieces (fbjni and
# SoLoader's nativeloader, which no registry package here ships; README 'Native libraries') are added where they
# are available.
set -euo pipefail
START=$SECONDS
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEMO="$ROOT/android_demo"
OUT="${ANDROID_BUILD_DIR:-$ROOT/build/android}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ABIS=(arm64-v8a x86_64)
MIN_SDK=24
KEY_PASS=android # the debug key's password, as Android's own debug keystore: it signs nothing but this demo

say() { echo "android: $*"; }
fail() { echo "error: android: $*" >&2; exit 1; }

eval "$("$DEMO/tools/toolchain.sh" "${ANDROID_CACHE:-$OUT/cache}")"
say "toolchain: API 23 android.jar, dx, aapt, ExecuTorch runtime from $ET_VERSION"

rm -rf "$OUT/classes" "$OUT/gen" "$OUT/stage" "$OUT"/*.apk
mkdir -p "$OUT/classes/core" "$OUT/classes/app" "$OUT/classes/executorch" "$OUT/classes/extra" "$OUT/gen" \
    "$OUT/stage/assets"
for abi in "${ABIS[@]}"; do mkdir -p "$OUT/stage/lib/$abi"; done

# 1. the core: what the JVM tests test, compiled the same way (Java 8 language and library)
find "$DEMO/core/src/main/java" -name '*.java' >"$OUT/core-sources.txt"
javac --release 8 -Xlint:all,-options -Werror -encoding UTF-8 -d "$OUT/classes/core" @"$OUT/core-sources.txt"

# 2. ExecuTorch's Java API, without its LLM/ASR/training extensions (not used; they need newer Android APIs)
(cd "$OUT/classes/executorch" && unzip -qo -W "$ET_PACKAGE/android/libs/classes.jar" 'org/pytorch/executorch/*.class' \
    'org/pytorch/executorch/annotations/*')
for abi in "${ABIS[@]}"; do
    cp "$ET_PACKAGE/third-party/android/libs/executorch/$abi/libexecutorch.so" "$OUT/stage/lib/$abi/"
done

# 3. optional extra jars/aars
IFS=: read -r -a extras <<<"${ANDROID_EXTRA:-}"
for f in "${extras[@]}"; do
    [ -n "$f" ] || continue
    [ -f "$f" ] || fail "ANDROID_EXTRA: $f is not a file"
    case "$f" in
        *.jar) (cd "$OUT/classes/extra" && unzip -qo "$f" '*.class') ;;
        *.aar)
            tmp=$(mktemp -d)
            unzip -qo "$f" -d "$tmp"
            [ -f "$tmp/classes.jar" ] && (cd "$OUT/classes/extra" && unzip -qo "$tmp/classes.jar" '*.class' || true)
            for abi in "${ABIS[@]}"; do
                if compgen -G "$tmp/jni/$abi/*.so" >/dev/null; then cp "$tmp/jni/$abi/"*.so "$OUT/stage/lib/$abi/"; fi
            done
            rm -rf "$tmp"
            ;;
        *) fail "ANDROID_EXTRA: $f is neither a .jar nor an .aar" ;;
    esac
    say "extra: $(basename "$f")"
done
rm -rf "$OUT/classes/extra/META-INF"

# 4. R.java from the resources, then the app against android.jar, the core and ExecuTorch's API
aapt package -f -m -J "$OUT/gen" -M "$DEMO/app/src/main/AndroidManifest.xml" -S "$DEMO/app/src/main/res" \
    -I "$ANDROID_JAR"
find "$DEMO/app/src/main/java" "$OUT/gen" -name '*.java' >"$OUT/app-sources.txt"
# -source/-target 8 with android.jar as the boot class path: javac's --release would compile against the JDK's API
javac -source 8 -target 8 -bootclasspath "$ANDROID_JAR" -Xlint:all,-options -Werror -encoding UTF-8 \
    -cp "$OUT/classes/core:$OUT/classes/executorch:$OUT/classes/extra" -d "$OUT/classes/app" @"$OUT/app-sources.txt"

# 5. one classes.dex
dex_inputs=("$OUT/classes/core" "$OUT/classes/executorch" "$OUT/classes/app")
if compgen -G "$OUT/classes/extra/*" >/dev/null; then dex_inputs+=("$OUT/classes/extra"); fi
java -jar "$DX_JAR" --dex --min-sdk-version=$MIN_SDK --output="$OUT/stage/classes.dex" "${dex_inputs[@]}"

# 6. manifest, resources and assets; then the dex and the native libraries
cp "$ROOT/cooperllm/spec/perturbation_golden.json" "$OUT/stage/assets/" # the app's start-up portability check
aapt package -f -M "$DEMO/app/src/main/AndroidManifest.xml" -S "$DEMO/app/src/main/res" -A "$OUT/stage/assets" \
    -I "$ANDROID_JAR" -F "$OUT/unsigned.apk"
(cd "$OUT/stage" && aapt add "$OUT/unsigned.apk" classes.dex lib/*/*.so >/dev/null)

# 7. align, sign with the debug key (made once per build folder), verify
zipalign -f -p 4 "$OUT/unsigned.apk" "$OUT/aligned.apk"
KS="$OUT/debug.keystore"
if [ ! -f "$KS" ]; then
    keytool -genkeypair -keystore "$KS" -storepass "$KEY_PASS" -keypass "$KEY_PASS" -alias androiddebugkey \
        -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=CooperLLM debug,O=CooperLLM,C=US" >/dev/null 2>&1 ||
        fail "keytool could not make the debug key"
    say "made a debug signing key: $KS"
fi
APK="$OUT/cooperllm-demo.apk"
apksigner sign --ks "$KS" --ks-pass "pass:$KEY_PASS" --key-pass "pass:$KEY_PASS" --out "$APK" "$OUT/aligned.apk"
rm -f "$OUT/unsigned.apk" "$OUT/aligned.apk" "$APK.idsig"
apksigner verify "$APK" || fail "apksigner verify failed on $APK"
say "$APK ($(du -k "$APK" | cut -f1) KiB, signed and verified) in $((SECONDS - START)) s"
