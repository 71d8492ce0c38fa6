#!/usr/bin/env bash
# Build and test the Android demo's pure-JVM core with a plain JDK (no Gradle, no network, no jars).
#   ./build.sh            compile main (Java 8 API level, as on Android) and tests into build/
#   ./build.sh test [-Dkey=value ...] [TestClass ...]
#                         compile, then run the tests; the last line is "N passed, N failed, N skipped"
# Properties: cooperllm.golden (golden JSON), cooperllm.fixtures (DTC frames from the Python encoder),
# cooperllm.cloud (JSON file describing a live cloud), cooperllm.test.only (substring of test ids to run).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${BUILD_DIR:-$HERE/build}"
ALL_TESTS=(GoldenTest ZoTest OutboxTest SafetensorsTest ClientTest DtcTest ArtifactTest ReplayScaleTest LiveCloudTest GraphCallTest)

rm -rf "$OUT/main" "$OUT/test"
mkdir -p "$OUT/main" "$OUT/test"
find "$HERE/src/main/java" -name '*.java' > "$OUT/main-sources.txt"
javac --release 8 -Xlint:all,-options -Werror -encoding UTF-8 -d "$OUT/main" @"$OUT/main-sources.txt"
find "$HERE/src/test/java" -name '*.java' > "$OUT/test-sources.txt"
javac --release 17 -Xlint:all -encoding UTF-8 -cp "$OUT/main" -d "$OUT/test" @"$OUT/test-sources.txt"

[[ "${1:-}" == "test" ]] || exit 0
shift
props=()
classes=()
for a in "$@"; do
  if [[ "$a" == -D* ]]; then props+=("$a"); else classes+=("org.cooperllm.core.$a"); fi
done
if [[ ${#classes[@]} -eq 0 ]]; then
  for c in "${ALL_TESTS[@]}"; do
    [[ -f "$HERE/src/test/java/org/cooperllm/core/$c.java" ]] && classes+=("org.cooperllm.core.$c")
  done
fi
cd "$HERE"
exec java -ea -Dcooperllm.golden="$HERE/../../cooperllm/spec/perturbation_golden.json" "${props[@]}" \
  -cp "$OUT/main:$OUT/test" org.cooperllm.core.TestRunner "${classes[@]}"
