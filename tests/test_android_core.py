"""The Android demo's pure-JVM core (android_demo/core), built with javac and tested with its own harness.

The Java tests check the same golden vectors as the Python suite, decode DTC frames that the Python encoder writes
here (nothing committed by hand), and drive the real cloud on 127.0.0.1 (uvicorn, tiny model, SQLite; ~25 s with
the build, so it stays in the default tier). The Java harness ends with "N passed, N failed, N skipped"; each test
here asserts the exit code and those counts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard
from java_core import CORE, aarch64_java, build_core
from live_cloud import ADMIN, ENROL, small_run, start_server
from safetensors import safe_open
from safetensors.numpy import load_file

from cooperllm import dtc
from cooperllm.adapter import AdapterSpec
from cooperllm.api_client import CooperClient
from cooperllm.checkpoint import initial_theta, save_theta
from cooperllm.frames import encode_plain_frame
from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.manifest import DATA_INPUTS, OUTPUTS, GraphSpec, Manifest, read_manifest, sha256_file, write_manifest
from cooperllm.perturb import Direction
from cooperllm.protocol import update_to_wire
from cooperllm.tasks import TaskSpec
from cooperllm.tokenization import EncodedBatch, PromptEncoder
from cooperllm.zgr import BlockGuidance, BlockUpdate, Report, apply_update
from device_runtime.backends import open_backend
from device_runtime.engine import step_seed

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "cooperllm" / "spec" / "perturbation_golden.json"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")

pytestmark = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None,
    reason="no JDK (javac/java) on PATH: the Android core's Java tests need JDK 11+",
)


@pytest.fixture(scope="session")
def java_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile main (Java 8 API level) and test sources once per session with android_demo/core/build.sh."""
    return build_core(tmp_path_factory.mktemp("android-core-build"))


# the JVMs the core's suites run on: the host's, and (integration tier) an aarch64 one, a phone's CPU under qemu
JVMS = ["x86_64", pytest.param("aarch64", marks=pytest.mark.integration)]


@pytest.fixture(params=JVMS)
def jvm(request) -> list[str]:
    """The command that starts the JVM a test's Java side runs on."""
    return ["java"] if request.param == "x86_64" else aarch64_java()


def run_java(
    build: Path,
    classes: list[str],
    props: dict[str, str] | None = None,
    timeout: float = 300,
    jvm: list[str] = ("java",),
) -> tuple:
    """Run the harness on ``classes`` (on ``jvm``: the host's java by default); returns (passed, failed, skipped,
    output)."""
    cmd = [*jvm, "-ea", f"-Dcooperllm.golden={GOLDEN}"]
    cmd += [f"-D{k}={v}" for k, v in (props or {}).items()]
    cmd += ["-cp", f"{build / 'main'}:{build / 'test'}", "org.cooperllm.core.TestRunner"]
    cmd += [f"org.cooperllm.core.{c}" for c in classes]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=CORE)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    m = SUMMARY.match(lines[-1]) if lines else None
    assert m, f"no summary line from the Java harness:\n{out}"
    passed, failed, skipped = (int(g) for g in m.groups())
    assert proc.returncode == (0 if failed == 0 and passed > 0 else 1), out
    return passed, failed, skipped, out


def test_java_core_golden_zo_loop_and_outbox(java_build: Path, jvm: list[str]) -> None:
    passed, failed, skipped, out = run_java(
        java_build, ["GoldenTest", "ZoTest", "OutboxTest", "SafetensorsTest", "ClientTest", "BucketTest"], jvm=jvm
    )
    assert f"os.arch {'aarch64' if len(jvm) > 1 else 'amd64'}" in out, out
    assert failed == 0 and skipped == 0, out
    assert passed == 27, out
    for name in (
        "GoldenTest.roundReplaysMatchGoldenBitForBit",
        "GoldenTest.directionsMatchGolden",
        "GoldenTest.longStreamsMatchGoldenHashes",
        "ZoTest.plainMezoMinimisesAQuadratic",
        "OutboxTest.nothingEnqueuedIsLostWhenTheProcessIsKilled",
    ):
        assert f"PASS {name}" in out, out


def test_java_harness_reports_failures(java_build: Path, tmp_path: Path) -> None:
    """The counts are real: a corrupted golden file makes the Java golden tests fail (and the run exit non-zero)."""
    golden = json.loads(GOLDEN.read_text())
    golden["replays"][0]["theta1_sha256"] = "0" * 64
    golden["mix64"][1]["out"] = "0000000000000001"
    bad = tmp_path / "golden.json"
    bad.write_text(json.dumps(golden))
    passed, failed, _, out = run_java(java_build, ["GoldenTest"], {"cooperllm.golden": str(bad)})
    assert failed == 3, out
    for name in (
        "roundReplaysMatchGoldenBitForBit",
        "mix64MatchesGolden",
        "portabilityCheckPassesHereAndCatchesCorruption",
    ):
        assert f"FAIL GoldenTest.{name}" in out, out


# --- DTC fixtures from the Python encoder ---------------------------------------------------------------------------


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def make_dtc_fixtures(folder: Path) -> dict:
    """Frames made by cooperllm.dtc / zstandard now, with the Python decoder's output as the expected values."""
    rng = np.random.default_rng(20260101)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict = {"tensors": [], "zstd": [], "reports": [], "bad_frames": []}

    basis, _ = np.linalg.qr(rng.normal(size=(15360, 4)))
    tensors = {
        "guidance_basis_adaptive": (basis.astype(np.float32), {}),
        "normal_bits2": (rng.normal(size=(3, 1000)), {"bits": 2}),
        "normal_bits3_block64": (rng.normal(size=1001), {"bits": 3, "block_size": 64}),
        "normal_bits4": (rng.normal(size=(7, 33)), {"bits": 4}),
        "normal_bits6": (rng.normal(size=5000), {"bits": 6}),
        "normal_bits8_block8": (rng.normal(size=77), {"bits": 8, "block_size": 8}),
        "normal_bits16": (rng.normal(size=(2, 3, 50)) * 1e-3, {"bits": 16}),
        "lossless_bits32": (rng.normal(size=300), {"bits": 32}),
        "adaptive_mixed_scales": (np.concatenate([rng.normal(size=2000) * 1e-4, rng.normal(size=2000) * 10.0]), {}),
        "adaptive_rel_l2": (rng.standard_t(3, size=4096), {"cosine_budget": None, "rel_l2_budget": 0.01}),
        "adaptive_byte_budget": (rng.normal(size=10000), {"byte_budget": 4000}),
        "stochastic": (rng.normal(size=2048), {"bits": 4, "stochastic": True, "seed": 7}),
        "all_zeros": (np.zeros((64, 64)), {"bits": 8}),
        "scalar_0d": (np.array(3.25), {"bits": 32}),
        "empty": (np.zeros((0, 4)), {"bits": 8}),
        "large_lora_like": (rng.normal(size=(8, 576)) * 0.02, {}),
    }
    for name, (arr, kw) in tensors.items():
        frame = dtc.encode(np.asarray(arr, dtype=np.float32), **kw)
        expected = dtc.decode(frame)
        (folder / f"{name}.dtc").write_bytes(frame)
        (folder / f"{name}.f32").write_bytes(_f32(expected))
        cases["tensors"].append(
            {"name": name, "frame": f"{name}.dtc", "expected": f"{name}.f32", "shape": list(expected.shape)}
        )
    plain = rng.normal(size=(5, 6)).astype(np.float32)
    (folder / "plain.cltf").write_bytes(encode_plain_frame(plain))
    (folder / "plain.f32").write_bytes(_f32(plain))
    cases["tensors"].append({"name": "plain_cltf", "frame": "plain.cltf", "expected": "plain.f32", "shape": [5, 6]})

    text = b"".join(b"round %d block %d seed %d scalar %.6f\n" % (i, i % 30, i * 7919, np.sin(i)) for i in range(20000))
    streams = {
        "random_bytes": (rng.integers(0, 256, size=50_000, dtype=np.uint8).tobytes(), 3, False),
        "text_level1": (text[:70_000], 1, False),
        "text_level3_multiblock": (text, 3, True),
        "text_level19": (text[:90_000], 19, False),
        "floats_level9": (_f32(rng.normal(size=40_000) * 0.01), 9, True),
        "low_entropy": (
            bytes(rng.choice([0, 1, 2, 255], size=100_000, p=[0.7, 0.2, 0.09, 0.01]).astype(np.uint8)),
            5,
            False,
        ),
        "rle_run": (b"\x07" * 300_000, 3, False),
        "small": (b"abcabcabcabcabd", 3, False),
        "empty": (b"", 3, False),
    }
    for name, (raw, level, checksum) in streams.items():
        z = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=checksum).compress(raw)
        (folder / f"{name}.zst").write_bytes(z)
        (folder / f"{name}.raw").write_bytes(raw)
        cases["zstd"].append({"name": name, "zst": f"{name}.zst", "raw": f"{name}.raw"})

    good = dtc.encode(rng.normal(size=(64, 64)).astype(np.float32))
    bad = {
        "truncated": good[:-5],
        "trailing_bytes": good + b"\x00",
        "bad_magic": b"XDTC" + good[4:],
        "crc_mismatch": good[:-1] + bytes([good[-1] ^ 0x10]),
        "bad_version": good[:4] + b"\x09" + good[5:],
        "header_only": good[:16],
        "huge_shape": dtc.encode(np.zeros(16, np.float32), bits=8)[:16]
        + np.array([1 << 40], "<u8").tobytes()
        + b"\0" * 12,
        "report_batch_not_tensor": dtc.encode_reports([]),
    }
    for name, frame in bad.items():
        (folder / f"bad_{name}.bin").write_bytes(frame)
        cases["bad_frames"].append({"frame": f"bad_{name}.bin", "why": name})

    reports = [
        Report(seed=int(s), block=int(b), step=int(t), scalar=float(p), n_examples=int(n))
        for s, b, t, p, n in zip(
            rng.integers(0, (1 << 63) - 1, size=50, dtype=np.int64),
            rng.integers(-1, 30, size=50),
            np.arange(50),
            rng.normal(size=50) * 10,
            rng.integers(1, 64, size=50),
            strict=True,
        )
    ]
    reports.append(Report(seed=(1 << 63) - 1, block=-1, step=0, scalar=-1e-30, n_examples=1))
    as_json = [
        {"seed": r.seed, "block": r.block, "step": r.step, "scalar": r.scalar, "n_examples": r.n_examples}
        for r in reports
    ]
    for bits in (32, 64):
        frame = dtc.encode_reports(reports, scalar_bits=bits)
        decoded = dtc.decode_reports(frame)
        (folder / f"reports_f{bits}.dtc").write_bytes(frame)
        cases["reports"].append(
            {
                "frame": f"reports_f{bits}.dtc",
                "reports": [
                    {"seed": r.seed, "block": r.block, "step": r.step, "scalar": r.scalar, "n_examples": r.n_examples}
                    for r in decoded
                ],
            }
        )
    cases["reports_to_encode"] = as_json
    cases["step_seeds"] = [
        [b, r, s, step_seed(b, r, s)] for b in (0, 7, (1 << 63) - 1) for r in (0, 5) for s in (0, 1, 99)
    ]
    (folder / "cases.json").write_text(json.dumps(cases))
    return cases


def test_java_decodes_python_dtc_frames_and_python_decodes_java_reports(
    java_build: Path, tmp_path: Path, jvm: list[str]
) -> None:
    cases = make_dtc_fixtures(tmp_path / "fixtures")
    fixtures = {"cooperllm.fixtures": str(tmp_path / "fixtures")}
    passed, failed, skipped, out = run_java(java_build, ["DtcTest"], fixtures, jvm=jvm)
    assert failed == 0 and skipped == 0 and passed == 7, out
    for bits in (32, 64):
        got = dtc.decode_reports((tmp_path / "fixtures" / "java_out" / f"reports_f{bits}.dtc").read_bytes())
        want = cases["reports_to_encode"]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g.seed, g.block, g.step, g.n_examples) == (w["seed"], w["block"], w["step"], w["n_examples"])
            expected = float(np.float32(w["scalar"])) if bits == 32 else w["scalar"]
            assert g.scalar == expected


# --- a full-size round --------------------------------------------------------------------------------------------


def test_java_replays_a_smollm2_sized_round_to_the_python_checksum(
    java_build: Path, tmp_path: Path, jvm: list[str]
) -> None:
    """460,800 values in 30 blocks, rank-4 guidance everywhere, a zgr round (subspace and complement reports on each
    block plus all-block ones, a published q and w per block): Java and Python must agree on θ's checksum after the
    round. Both replay times are printed (-s to see them)."""
    rng = np.random.default_rng(11)
    layout = ParamLayout.build(
        [(f"l{i}.{p}", (8, 960), f"layer.{i}") for i in range(30) for p in ("A", "B")]
    )  # 30 blocks × 15,360 values, as SmolLM2's LoRA q/v r8
    theta0 = (rng.normal(size=layout.total) * 0.02).astype(np.float32)
    guidance = {}
    for b, blk in enumerate(layout.blocks):
        q, _ = np.linalg.qr(rng.normal(size=(blk.size, 4)))
        guidance[b] = BlockGuidance(q.astype(np.float32), rng.normal(size=4).astype(np.float32))
        (tmp_path / f"basis_{b}.f32").write_bytes(_f32(guidance[b].basis))
    directions = (Direction.SUBSPACE, Direction.COMPLEMENT)
    reports = [  # step s measured directions[s mod 2]: 2 subspace and 2 complement reports per block
        Report(int(s), i % 30, i // 30, float(p), 8)
        for i, (s, p) in enumerate(zip(rng.integers(0, 1 << 62, 120), rng.normal(size=120), strict=True))
    ]
    reports += [
        Report(int(s), -1, t, float(p), 8)
        for t, (s, p) in enumerate(zip(rng.integers(0, 1 << 62, 4), rng.normal(size=4), strict=True))
    ]
    update = {
        b: BlockUpdate(q=float(rng.normal()) * 1e-3, w=(rng.normal(size=4) * 1e-2).astype(np.float32))
        for b in range(30)
    }
    theta1 = theta0.copy()
    t = time.perf_counter()
    apply_update(theta1, layout, reports, directions, guidance, update)
    py_ms = (time.perf_counter() - t) * 1e3
    (tmp_path / "theta0.f32").write_bytes(_f32(theta0))
    round_json = {
        "layout": layout.to_dict(),
        "guidance": [{"block": b, "coeffs": g.coeffs.tolist()} for b, g in guidance.items()],
        "reports": [r.__dict__ for r in reports],
        "directions": [d.name.lower() for d in directions],
        "update": [u.model_dump() for u in update_to_wire(update)],  # as ModelSync carries it
        "theta0_sha256": theta_checksum(theta0),
        "theta1_sha256": theta_checksum(theta1),
    }
    (tmp_path / "round.json").write_text(json.dumps(round_json))
    passed, failed, skipped, out = run_java(
        java_build, ["ReplayScaleTest"], {"cooperllm.replay": str(tmp_path)}, jvm=jvm
    )
    assert (passed, failed, skipped) == (1, 0, 0), out
    java_ms = float(re.search(r"REPLAY_MS ([0-9.]+)", out).group(1))
    print(f"full-size round replay: Java {java_ms:.0f} ms, Python (numpy) {py_ms:.0f} ms")


# --- the app's inputs: an artifact folder and a device data file --------------------------------------------------


def make_artifacts(folder: Path, tiny_model_dir: Path) -> dict:
    """A manifest written by cooperllm.manifest over real files (tokenizer, initial adapter; the graph's bytes are
    only hashed here, running it needs a phone), plus the values the Java side must find."""
    folder.mkdir(parents=True)
    task = TaskSpec()
    shutil.copy(tiny_model_dir / "tokenizer.json", folder / "tokenizer.json")
    enc = PromptEncoder(folder / "tokenizer.json", task, 32)
    entries = []
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            base = f"lm.model.layers.{layer}.self_attn.{proj}"
            entries += [
                (f"{base}.lora_A.weight", (8, 64), f"layer.{layer}"),
                (f"{base}.lora_B.weight", (64, 8), f"layer.{layer}"),
            ]
    layout = ParamLayout.build(entries)
    theta0 = (np.random.default_rng(3).normal(size=layout.total) * 0.02).astype(np.float32)
    save_theta(folder / "adapter.safetensors", theta0, layout)
    (folder / "model.pte").write_bytes(np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files = ["tokenizer.json", "adapter.safetensors", "model.pte"]
    manifest = Manifest(
        model_name="tiny-llama",
        task=task,
        adapter=AdapterSpec(),
        layout=layout,
        graphs=[GraphSpec("model.pte", "pte", "xnnpack", 8, 32, seq_buckets=(24, 28, 32))],
        input_names=[*DATA_INPUTS, *layout.names],
        output_names=list(OUTPUTS),
        label_token_ids=list(enc.label_token_ids),
        pad_token_id=int(enc.pad_id),
        tokenizer_file="tokenizer.json",
        initial_adapter_file="adapter.safetensors",
        quantization={"weights": "int8"},
        files={f: sha256_file(folder / f) for f in files},
    )
    write_manifest(folder, manifest)
    return {
        "total": layout.total,
        "n_blocks": len(layout.blocks),
        "input_names": manifest.input_names,
        "seq_len": 32,
        "seq_buckets": [24, 28, 32],
        "manifest_sha256": sha256_file(folder / "manifest.json"),
        "graph_sha256": manifest.files["model.pte"],
        "theta0_sha256": theta_checksum(theta0),
    }


def test_java_reads_artifacts_and_device_data_made_in_python(
    java_build: Path, tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path, jvm: list[str]
) -> None:
    sys.path.insert(0, str(ROOT / "android_demo" / "tools"))
    try:
        from prepare_device_data import prepare
    finally:
        sys.path.pop(0)
    expected = make_artifacts(tmp_path / "artifacts", tiny_model_dir)
    out = tmp_path / "device" / "train.safetensors"
    summary = prepare(tmp_path / "artifacts", sst2_dir / "dev.tsv", out, n_devices=8, device=3, limit=40)
    assert summary["examples"] == 40 and summary["seq_len"] == 32 and sum(summary["label_counts"]) == 40
    tensors = load_file(str(out))
    assert tensors["input_ids"].shape == (40, 32) and tensors["input_ids"].dtype == np.int64
    expected.update(n_examples=40, labels=tensors["labels"].tolist(), first_ids=tensors["input_ids"][0].tolist())
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    props = {
        "cooperllm.artifacts": str(tmp_path / "artifacts"),
        "cooperllm.device_data": str(out),
        "cooperllm.expected": str(tmp_path / "expected.json"),
    }
    passed, failed, skipped, log = run_java(java_build, ["ArtifactTest"], props, jvm=jvm)
    assert (passed, failed, skipped) == (4, 0, 0), log


# --- the live cloud -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_cloud(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sst2_dir: Path):
    """The real cloud: uvicorn on 127.0.0.1 (ephemeral port), tiny model, SQLite file, small public split."""
    tmp = tmp_path_factory.mktemp("android-cloud")
    public = tmp / "public.tsv"
    public.write_text("\n".join((sst2_dir / "dev.tsv").read_text().splitlines()[:101]) + "\n")
    server = start_server(tmp, tiny_model_dir, public, public_n=16, seq_len=24)
    yield server.url, server.app
    server.stop()


def test_java_client_against_the_live_cloud(java_build: Path, live_cloud, tmp_path: Path, jvm: list[str]) -> None:
    """Enrol, take every round of a zgr run, download guidance, upload toy-loss reports, restart with a pending
    batch, and sync by replay to the server's checksum — all from Java against the real cloud. λ 0.1 with budget
    'follow' gives round 3 (after three rounds that tested the cloud) wholly to ISO directions: Java replays it with
    the directions its sync names."""
    url, app = live_cloud
    admin = CooperClient(url, ADMIN)
    rounds = 4
    run = admin.create_run(small_run(rounds=rounds, deadline_s=120, lam=0.1, budget="follow"))
    layout = app.state.cooper.engine.host.layout
    # what a phone reads from the artifact's manifest.json: the θ layout (the cloud and the exporter share it)
    config = {
        "url": url,
        "enrolment_key": ENROL,
        "admin_token": ADMIN,
        "manifest": {"layout": layout.to_dict()},
        "state_dir": str(tmp_path / "device"),
        "rounds": rounds,
        "out": str(tmp_path / "result.json"),
    }
    (tmp_path / "cloud.json").write_text(json.dumps(config))
    passed, failed, skipped, out = run_java(
        java_build, ["LiveCloudTest"], {"cooperllm.cloud": str(tmp_path / "cloud.json")}, jvm=jvm
    )
    assert (passed, failed, skipped) == (1, 0, 0), out
    result = json.loads((tmp_path / "result.json").read_text())
    info = admin.run(run.run_id)
    assert info.status == "finished"
    assert result["final_checksum"] == info.theta_checksum != run.theta_checksum  # θ moved, and Java followed it
    assert result["downloads"] == 1 and result["replays"] == rounds
    summaries = admin.rounds(run.run_id)
    assert [s.status for s in summaries] == ["closed"] * rounds
    per_round = 2 * 2 * len(layout.blocks)  # local_steps × zgr's two directions (subspace, complement) × blocks
    assert [s.n_reports for s in summaries] == [per_round] * rounds
    assert all(s.n_devices == 1 for s in summaries)
    assert [s.rectifier["axis"] is None for s in summaries] == [False, False, False, True]  # round 3 tested nothing
    assert admin.metrics().idempotent_replays >= 1
    second = admin.run(result["run2"])  # the zo run the Java test started: followed to its end by replay
    assert second.status == "finished" and second.theta_checksum == result["run2_checksum"]
    assert [s.n_reports for s in admin.rounds(second.run_id)] == [3, 3]


@pytest.mark.integration
@pytest.mark.parametrize("buckets", [None, (24, 32)], ids=["fixed-length", "length-buckets"])
def test_java_graph_inputs_run_the_real_pte(java_build: Path, export_tiny, sst2_dir: Path, tmp_path: Path, buckets):
    """The inputs the app builds (GraphInputs: order, shapes, int64/float32) for a real exported tiny .pte run through
    ExecuTorch's runtime and give the same loss and logits as the Python device backend on the same batch and θ.
    With length buckets (short sentences, so the batch fits the 24 bucket) the app picks the bucket the Python
    backends pick and hands ExecuTorch the rows' last 24 positions."""
    import torch
    from executorch.runtime import Runtime

    art = tmp_path / "art"
    export_tiny(art, formats=("pte",), quant="int8", batch_size=4, seq_len=32, seq_buckets=buckets, validate=False)
    sys.path.insert(0, str(ROOT / "android_demo" / "tools"))
    try:
        from prepare_device_data import prepare
    finally:
        sys.path.pop(0)
    data, texts = tmp_path / "train.safetensors", sst2_dir / "dev.tsv"
    if buckets:  # phrases of one or two words: every row of a batch fits the 24 bucket (prompt template ~18 tokens)
        rows = texts.read_text().splitlines()
        texts = tmp_path / "short.tsv"
        texts.write_text("\n".join([rows[0], *[r for r in rows[1:] if len(r.split("\t")[0].split()) <= 2]]) + "\n")
    prepare(art, texts, data, limit=24)
    out = tmp_path / "inputs.safetensors"
    props = {"cooperllm.graph_artifacts": str(art), "cooperllm.device_data": str(data), "cooperllm.out": str(out)}
    passed, failed, skipped, log = run_java(java_build, ["GraphCallTest"], props)
    assert (passed, failed, skipped) == (1, 0, 0), log

    manifest = read_manifest(art)
    with safe_open(str(out), "pt") as f:
        order = f.metadata()["order"].split(",")
        inputs = [f.get_tensor(name) for name in order]
    assert order == manifest.input_names
    assert [t.dtype for t in inputs[:3]] == [torch.int64] * 3 and all(t.dtype == torch.float32 for t in inputs[3:])
    method = Runtime.get().load_program(art / manifest.graph("pte").file).load_method("forward")
    loss_java, logits_java = method.execute(inputs)[:2]

    theta = initial_theta(art, manifest)
    assert np.array_equal(np.concatenate([t.numpy().reshape(-1) for t in inputs[3:]]), theta)
    ids, mask = inputs[0].numpy(), inputs[1].numpy()
    width = ids.shape[1]
    pad = 32 - width  # the batch as the Python device holds it: left-padded to seq_len
    batch = EncodedBatch(
        np.pad(ids, ((0, 0), (pad, 0)), constant_values=manifest.pad_token_id),
        np.pad(mask, ((0, 0), (pad, 0))),
        inputs[2].numpy(),
    )
    backend = open_backend(art, "executorch", manifest=manifest)
    assert width == backend.length_for(batch) == (24 if buckets else 32)  # the bucket the Python backends pick
    loss_py, logits_py = backend.run(batch, theta)
    assert float(loss_java) == loss_py and np.array_equal(logits_java.numpy(), logits_py)
    assert np.isfinite(loss_py) and logits_py.shape == (4, 2)
