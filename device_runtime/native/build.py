"""Build the native ExecuTorch runner with the machine's g++ against the executorch wheel's headers and libraries.

Why a wheel and not a source build: the wheel already ships ``include/`` and the runtime, kernel and XNNPACK shared
libraries; compiling one small file against them takes seconds. Outputs go to a gitignored cache folder keyed by a
hash of the sources, flags, compiler and wheel, so tests and the device runtime build once and reuse the result.

Command line (the README's setup step)::

    .venv/bin/python -m device_runtime.native.build                       # host library + runner executable
    .venv/bin/python -m device_runtime.native.build --fetch-aarch64-wheel  # pip-download + unpack the ARM wheel
    .venv/bin/python -m device_runtime.native.build --arch aarch64         # cross build against it
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from cooperllm.console import fail

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "runner.cpp",)
MAIN_SOURCE = HERE / "main.cpp"
BUILD_ROOT = Path(os.environ.get("COOPERLLM_NATIVE_BUILD", HERE / "build"))
LIB_NAME = "libcooperllm_et.so"
EXE_NAME = "cooperllm_et_run"
# Link order matters only for static archives; --no-as-needed keeps the kernel/delegate libraries whose static
# initializers register operators and the XNNPACK backend although no symbol of theirs is referenced.
ET_LIBS = ("executorch", "executorch_kernels_optimized", "executorch_backend_xnnpack", "executorch_threadpool")
CXXFLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-Wall",
    "-Wno-deprecated-declarations",
    "-DC10_USING_CUSTOM_GENERATED_MACROS",
)
COMPILERS = {"x86_64": "g++", "aarch64": "aarch64-linux-gnu-g++"}
AARCH64_WHEEL_DIR = BUILD_ROOT / "et-aarch64"  # the unpacked aarch64 executorch wheel (headers + ARM .so files)
AARCH64_PLATFORM = "manylinux_2_28_aarch64"


class NativeBuildError(RuntimeError):
    """The runner cannot be built here; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Built:
    library: Path
    executable: Path
    et_lib_dir: Path


def executorch_root() -> Path:
    """The installed executorch package folder, found without importing it (its __init__ would pull torch)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise NativeBuildError("the executorch wheel is not installed: pip install executorch==1.5.1 (see README)")
    return Path(next(iter(spec.submodule_search_locations)))


def default_root(arch: str) -> Path:
    """The executorch package folder to build against: the installed wheel, or the unpacked ARM one."""
    if arch == "aarch64":
        root = Path(os.environ.get("COOPERLLM_ET_AARCH64", AARCH64_WHEEL_DIR / "executorch"))
        if not root.is_dir():
            raise NativeBuildError(
                f"no aarch64 executorch wheel at {root}: run `python -m device_runtime.native.build "
                "--fetch-aarch64-wheel` (or set COOPERLLM_ET_AARCH64 to an unpacked wheel's executorch folder)"
            )
        return root
    return executorch_root()


def fetch_aarch64_wheel(dest: Path = AARCH64_WHEEL_DIR) -> Path:
    """pip-download the executorch wheel of the installed version for aarch64 and unpack it; returns its package dir."""

    ver = version("executorch")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        AARCH64_PLATFORM,
        "--python-version",
        py,
        f"executorch=={ver}",
        "-d",
        str(dest),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob(f"executorch-{ver}-*aarch64*.whl"))
    if res.returncode != 0 or not wheels:
        raise NativeBuildError(
            f"cannot download the aarch64 executorch wheel:\n$ {' '.join(cmd)}\n{res.stderr[-2000:]}"
        )
    with zipfile.ZipFile(wheels[-1]) as z:
        members = [m for m in z.namelist() if m.startswith(("executorch/include/", "executorch/lib/"))]
        z.extractall(dest, members)
    return dest / "executorch"


def check_wheel(root: Path) -> tuple[Path, Path]:
    """(include dir, lib dir) of an executorch package folder, or a NativeBuildError naming what is missing."""
    inc, lib = root / "include", root / "lib"
    if not (inc / "executorch" / "extension" / "module" / "module.h").is_file():
        raise NativeBuildError(f"{root} has no ExecuTorch headers (include/executorch/extension/module/module.h)")
    missing = [f"lib{name}.so" for name in ET_LIBS if not (lib / f"lib{name}.so").is_file()]
    if missing:
        raise NativeBuildError(f"{lib} lacks {', '.join(missing)}: the executorch wheel is incomplete")
    return inc, lib


def find_compiler(arch: str) -> str:
    if arch not in COMPILERS:
        raise NativeBuildError(f"unknown target architecture {arch!r}; choose one of {', '.join(COMPILERS)}")
    cxx = os.environ.get("CXX") if arch == "x86_64" else None
    cxx = cxx or COMPILERS[arch]
    path = shutil.which(cxx)
    if path is None:
        pkg = "g++" if arch == "x86_64" else "g++-aarch64-linux-gnu"
        raise NativeBuildError(f"C++ compiler {cxx!r} not found: apt-get install -y {pkg}")
    return path


def _compiler_version(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "?"


def _build_key(cxx: str, inc: Path, lib: Path, arch: str) -> str:
    h = hashlib.sha256()
    for src in (*SOURCES, MAIN_SOURCE):
        h.update(src.read_bytes())
    h.update(" ".join(CXXFLAGS + ET_LIBS + (arch, _compiler_version(cxx), str(lib))).encode())
    for name in ET_LIBS:
        st = (lib / f"lib{name}.so").stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build(arch: str = "x86_64", et_root: Path | None = None, force: bool = False) -> Built:
    """Compile (or reuse) the shared library and the runner executable for ``arch``; returns their paths."""
    root = Path(et_root) if et_root else default_root(arch)
    inc, lib = check_wheel(root)
    cxx = find_compiler(arch)
    out = BUILD_ROOT / f"{arch}-{_build_key(cxx, inc, lib, arch)}"
    built = Built(out / LIB_NAME, out / EXE_NAME, lib)
    if not force and built.library.is_file() and built.executable.is_file():
        return built
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=out.parent))
    common = [*CXXFLAGS, f"-I{inc}", f"-I{inc / 'executorch/runtime/core/portable_type/c10'}"]
    link = [f"-L{lib}", "-Wl,--no-as-needed", *(f"-l{n}" for n in ET_LIBS), f"-Wl,-rpath,{lib}"]
    steps = [
        [cxx, *common, "-shared", *map(str, SOURCES), "-o", str(tmp / LIB_NAME), *link],
        [cxx, *common, str(MAIN_SOURCE), *map(str, SOURCES), "-o", str(tmp / EXE_NAME), *link],
    ]
    log.info("building the native ExecuTorch runner (%s) into %s", arch, out)
    try:
        for cmd in steps:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise NativeBuildError(f"compiling the native runner failed:\n$ {' '.join(cmd)}\n{res.stderr[-4000:]}")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # atomic publish: a concurrent builder sees either nothing or a complete folder
    except OSError as exc:
        if not (built.library.is_file() and built.executable.is_file()):
            raise NativeBuildError(f"cannot write the build folder {out}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_runtime.native.build", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="x86_64", choices=sorted(COMPILERS), help="target architecture")
    p.add_argument("--et-root", type=Path, help="executorch package folder (default: the installed wheel)")
    p.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    p.add_argument("--fetch-aarch64-wheel", action="store_true", help=f"download + unpack into {AARCH64_WHEEL_DIR}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.fetch_aarch64_wheel:
            print(fetch_aarch64_wheel())
            return 0
        built = build(args.arch, args.et_root, args.force)
    except NativeBuildError as exc:
        return fail(exc, 2)
    print(built.library)
    print(built.executable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
