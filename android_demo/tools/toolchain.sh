#!/usr/bin/env bash
# The Android build's toolchain, from registries only, pinned by version and sha256, cached under $1 (default
# build/android/cache). Prints the paths the build needs as shell assignments (ANDROID_JAR, DX_JAR, ET_PACKAGE).
#
#   aapt, zipalign, apksigner, dexdump   Debian (this release), installed with apt-get when missing (root or sudo)
#   android.jar (API 23)                 Debian's previous release (bullseye): libandroid-23-java
#   dx, the dexer                        Debian's previous release (bullseye): dalvik-exchange
#   ExecuTorch's Android runtime         npm: react-native-executorch (its Java API classes and libexecutorch.so)
#
# The previous release's packages are fetched with a private apt state (nothing in /etc/apt changes), from the
# mirror this machine's own sources name, checked against Debian's signed release files and then against the
# sha256 below. Idempotent: a second run finds everything cached and downloads nothing.
set -euo pipefail

CACHE="${1:-build/android/cache}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

PREV_RELEASE=bullseye
DEBS=(
    "libandroid-23-java 6.0.1+r72-6 8af1b6df556971dda0a6da3536ea526a838e0c363afcdd454213d8bce94793e3"
    "dalvik-exchange 10.0.0+r36-1 8fc128db7c27253d963eb9b33de79b197162a4749d2ba69019b2fd0664cbd7fe"
)
# 0.8.5, not the newest: 0.9.x ships class files of Java 11 (version 55) with nest-mates, which dx cannot read and
# ART before API 34 would not run untranslated; 0.8.5's are Java 8 (version 52). 0.10.x ships no runtime at all
# (a post-install script downloads it).
ET_NPM="react-native-executorch@0.8.5"
ET_SHA256=4a1f84df51d75000dd5c28ad11fedd5ec0487f8b8189e8adcb001b9ca485c4b8

log() { echo "android-toolchain: $*" >&2; }
fail() { echo "error: android-toolchain: $*" >&2; exit 1; }

# --- host tools from this release -------------------------------------------------------------------------------
# command -> Debian package
HOST_TOOLS=("aapt aapt" "zipalign zipalign" "apksigner apksigner" "dexdump dexdump" "javac default-jdk-headless"
    "keytool default-jdk-headless" "npm npm")
missing=()
for pair in "${HOST_TOOLS[@]}"; do
    read -r cmd pkg <<<"$pair"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ " ${missing[*]-} " != *" $pkg "* ]]; then missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install them"
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "missing ${missing[*]}; not root and no sudo"
        SUDO=(sudo -n)
    fi
    log "installing ${missing[*]}"
    aptlog="$CACHE/apt-install.log"
    if ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >"$aptlog" 2>&1; then
        "${SUDO[@]}" apt-get update -qq >>"$aptlog" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >>"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; fail "apt-get install ${missing[*]} failed"; }
    fi
fi

# --- android.jar and dx from the previous release ---------------------------------------------------------------
debian_mirror() {
    # the first Debian archive URI this machine's apt sources name (deb822 or one-line format), not the security one
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n 1)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '{for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' | grep -v security | head -n 1)
    echo "${DEBIAN_MIRROR:-$uri}"
}

fetch_debs() {
    local apt_dir="$CACHE/apt" mirror
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt (set DEBIAN_MIRROR)"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$CACHE/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $PREV_RELEASE main" >"$apt_dir/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir" -o "Dir::Cache::archives=$apt_dir/archives" -o APT::Sandbox::User=root -qq)
    log "fetching ${PREV_RELEASE}'s package index (private apt state in $apt_dir)"
    apt-get "${opts[@]}" update >"$apt_dir/update.log" 2>&1 || { tail -n 20 "$apt_dir/update.log" >&2; fail "apt-get update ($PREV_RELEASE) failed"; }
    local spec name version
    for spec in "${DEBS[@]}"; do
        read -r name version _ <<<"$spec"
        (cd "$CACHE/debs" && apt-get "${opts[@]}" download "$name=$version" >"$apt_dir/download.log" 2>&1) ||
            { tail -n 20 "$apt_dir/download.log" >&2; fail "apt-get download $name=$version failed"; }
    done
}

ROOT_DIR="$CACHE/debian-root"
need_debs=0
for spec in "${DEBS[@]}"; do
    read -r name version sha <<<"$spec"
    compgen -G "$CACHE/debs/${name}_${version}_*.deb" >/dev/null || need_debs=1
done
[ "$need_debs" = 0 ] || fetch_debs
for spec in "${DEBS[@]}"; do
    read -r name version sha <<<"$spec"
    deb=$(compgen -G "$CACHE/debs/${name}_${version}_*.deb" | head -n 1)
    echo "$sha  $deb" | sha256sum --check --status || fail "$deb: sha256 differs from the pinned $sha"
    stamp="$ROOT_DIR/.${name}_${version}"
    if [ ! -f "$stamp" ]; then
        mkdir -p "$ROOT_DIR"
        dpkg-deb -x "$deb" "$ROOT_DIR"
        touch "$stamp"
    fi
done
ANDROID_JAR="$ROOT_DIR/usr/lib/android-sdk/platforms/android-23/android.jar"
DX_JAR="$ROOT_DIR/usr/share/java/com.android.dx.jar"
[ -f "$ANDROID_JAR" ] && [ -f "$DX_JAR" ] || fail "android.jar or dx.jar missing after unpacking the packages"

# --- ExecuTorch's Android runtime from npm ----------------------------------------------------------------------
ET_DIR="$CACHE/${ET_NPM/@/-}"
if [ ! -f "$ET_DIR/.unpacked" ]; then
    tarball="$CACHE/${ET_NPM/@/-}.tgz"
    if ! echo "$ET_SHA256  $tarball" | sha256sum --check --status 2>/dev/null; then
        log "fetching $ET_NPM from the npm registry"
        packed=$(cd "$CACHE" && npm pack --silent "$ET_NPM" 2>"$CACHE/npm.log" | tail -n 1) ||
            { tail -n 20 "$CACHE/npm.log" >&2; fail "npm pack $ET_NPM failed"; }
        [ "$CACHE/$packed" = "$tarball" ] || mv "$CACHE/$packed" "$tarball"
        echo "$ET_SHA256  $tarball" | sha256sum --check --status || fail "$tarball: sha256 differs from the pinned $ET_SHA256"
    fi
    rm -rf "$ET_DIR" && mkdir -p "$ET_DIR"
    tar -xzf "$tarball" -C "$ET_DIR" package/android/libs/classes.jar \
        package/third-party/android/libs/executorch/arm64-v8a/libexecutorch.so \
        package/third-party/android/libs/executorch/x86_64/libexecutorch.so
    touch "$ET_DIR/.unpacked"
fi

echo "ANDROID_JAR=$ANDROID_JAR"
echo "DX_JAR=$DX_JAR"
echo "ET_PACKAGE=$ET_DIR/package"
echo "ET_VERSION=$ET_NPM"
