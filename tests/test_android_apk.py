"""`make android` on a fresh checkout: a signed APK from registry packages only, checked with Android's own tools.

A fresh checkout is what git would give (tracked and untracked-but-not-ignored files), copied to a temporary folder
with no build outputs and no download cache, so the toolchain is fetched and verified as on a new machine (~45 MB:
Debian's android.jar and dx, the pinned react-native-executorch tarball; about a minute with the build). The APK is
then read back with `aapt dump`, `dexdump`, `zipalign -c` and `apksigner verify` — the tools a Play upload or
`adb install` relies on — and a tampered copy must fail verification, so the check can fail. Nothing here runs the
app: no emulator or ART exists on this machine (android_demo/README.md says what that leaves unverified).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
APP = "org.cooperllm.demo"
ELF_MACHINE = {"arm64-v8a": 0xB7, "x86_64": 0x3E}  # e_machine: EM_AARCH64, EM_X86_64


def _fresh_checkout(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():  # a deleted-but-tracked file is listed too
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _dex_classes(apk: Path) -> set[str]:
    out = _run(["dexdump", str(apk)], cwd=apk.parent)
    assert out.returncode == 0, out.stderr
    return {m.replace("/", ".") for m in re.findall(r"Class descriptor\s*:\s*'L([^;]+);'", out.stdout)}


def _java_classes(source_root: Path) -> set[str]:
    return {".".join(p.relative_to(source_root).with_suffix("").parts) for p in source_root.rglob("*.java")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, str, float]:
    checkout = _fresh_checkout(tmp_path_factory.mktemp("checkout"))
    assert not (checkout / "build").exists()
    t = time.monotonic()
    out = _run(["make", "android"], cwd=checkout)
    seconds = time.monotonic() - t
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    apk = checkout / "build" / "android" / "cooperllm-demo.apk"
    print(f"make android on a fresh checkout: {seconds:.0f} s, APK {apk.stat().st_size / 2**20:.1f} MiB")
    return checkout, apk, out.stdout + out.stderr, seconds


def test_the_apk_declares_the_app_and_its_components(built) -> None:
    _, apk, _, _ = built
    badging = _run(["aapt", "dump", "badging", str(apk)], cwd=apk.parent)
    assert badging.returncode == 0, badging.stderr
    assert f"package: name='{APP}'" in badging.stdout
    assert "sdkVersion:'24'" in badging.stdout and "targetSdkVersion:'24'" in badging.stdout
    assert f"launchable-activity: name='{APP}.MainActivity'" in badging.stdout
    assert "native-code: 'arm64-v8a' 'x86_64'" in badging.stdout
    manifest = _run(["aapt", "dump", "xmltree", str(apk), "AndroidManifest.xml"], cwd=apk.parent).stdout
    for service in ("TrainingService", "UploadJobService"):
        assert f'"{APP}.{service}"' in manifest or f'".{service}"' in manifest
    assert '"android.permission.BIND_JOB_SERVICE"' in manifest  # what JobScheduler requires of the upload job


def test_the_dex_holds_the_app_the_whole_core_and_executorchs_api(built) -> None:
    checkout, apk, _, _ = built
    classes = _dex_classes(apk)
    core = _java_classes(checkout / "android_demo/core/src/main/java")
    app = _java_classes(checkout / "android_demo/app/src/main/java")
    assert len(core) > 20 and len(app) >= 7
    assert core <= classes, f"core classes missing from classes.dex: {sorted(core - classes)}"
    assert app <= classes, f"app classes missing from classes.dex: {sorted(app - classes)}"
    assert {f"org.pytorch.executorch.{c}" for c in ("Module", "EValue", "Tensor")} <= classes
    assert not any(".extension.llm." in c or ".training." in c for c in classes)  # left out on purpose


def test_native_libraries_for_both_abis_and_the_golden_asset(built) -> None:
    checkout, apk, _, _ = built
    with zipfile.ZipFile(apk) as z:
        for abi, machine in ELF_MACHINE.items():
            head = z.read(f"lib/{abi}/libexecutorch.so")[:20]
            assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == machine, abi
        golden = z.read("assets/perturbation_golden.json")
    assert golden == (checkout / "cooperllm/spec/perturbation_golden.json").read_bytes()


def test_the_apk_is_aligned_and_its_signature_verifies_and_a_tampered_copy_does_not(built, tmp_path) -> None:
    _, apk, _, _ = built
    assert _run(["zipalign", "-c", "-p", "4", str(apk)], cwd=tmp_path).returncode == 0
    ok = _run(["apksigner", "verify", "--print-certs", str(apk)], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "CN=CooperLLM debug" in ok.stdout
    tampered = tmp_path / "tampered.apk"
    with zipfile.ZipFile(apk) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "classes.dex":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    bad = _run(["apksigner", "verify", str(tampered)], cwd=tmp_path)
    assert bad.returncode != 0


def test_a_second_build_reuses_the_toolchain_and_adds_extra_jars_and_aars(built, tmp_path) -> None:
    checkout, apk, _, _ = built
    # an extra jar (one class) and an aar (a classes.jar and a native library per ABI), as ANDROID_EXTRA takes them
    src = tmp_path / "src/org/example/Extra.java"
    src.parent.mkdir(parents=True)
    src.write_text("package org.example;\npublic final class Extra { public static int one() { return 1; } }\n")
    classes = tmp_path / "classes"
    assert _run(["javac", "--release", "8", "-d", str(classes), str(src)], cwd=tmp_path).returncode == 0
    jar = tmp_path / "extra.jar"
    with zipfile.ZipFile(jar, "w") as z:
        z.write(classes / "org/example/Extra.class", "org/example/Extra.class")
    aar = tmp_path / "native.aar"
    with zipfile.ZipFile(aar, "w") as z:
        z.writestr("classes.jar", jar.read_bytes())
        for abi in ELF_MACHINE:
            z.writestr(f"jni/{abi}/libextra.so", b"\x7fELF-fixture-" + abi.encode())
    out = _run(["make", "android", f"ANDROID_EXTRA={jar}:{aar}"], cwd=checkout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "fetching" not in out.stdout + out.stderr  # everything came from the verified cache
    assert "org.example.Extra" in _dex_classes(apk)
    with zipfile.ZipFile(apk) as z:
        names = set(z.namelist())
    assert {f"lib/{abi}/libextra.so" for abi in ELF_MACHINE} <= names
    bad = _run(["make", "android", f"ANDROID_EXTRA={tmp_path / 'missing.jar'}"], cwd=checkout)
    assert bad.returncode != 0 and "is not a file" in bad.stderr
