"""``cooperllm bench export``: the done-when table for the exported artifacts, every figure from one run.

Exports fp32 and int8 artifacts (each export in its own process, wall-clock and peak RSS recorded), then loads each
artifact in a fresh process and times forward calls at batch × seq_len. The baseline, measured in the same run and
also in a fresh process, is the eager PyTorch fp32 forward of the same loss: sizes are reported against the fp32
artifact of the same format, speed and memory against the eager baseline. |Δ| vs eager and the ZO fidelity come from
the export-time validation stored in each manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from cooperllm.adapter import AdapterSpec
from cooperllm.manifest import read_manifest
from cooperllm.tasks import TaskSpec

log = logging.getLogger(__name__)

# export name -> export_artifacts arguments
EXPORTS = {
    "fp32": {"formats": ["pte", "onnx"], "backend": "xnnpack", "quant": "none"},
    "int8-portable": {"formats": ["pte"], "backend": "portable", "quant": "int8"},
    "int8": {"formats": ["pte", "onnx"], "backend": "xnnpack", "quant": "int8"},
    "int4": {"formats": ["onnx"], "backend": "xnnpack", "quant": "int4"},
}
OPTIONAL = {"int4": "int4"}  # export name -> the flag that enables it
# (row label, export name, graph file, fp32 reference row for the size ratio)
ARTIFACTS = [
    ("fp32 XNNPACK .pte", "fp32", "model.pte", "fp32 XNNPACK .pte"),
    ("int8 portable .pte", "int8-portable", "model.pte", "fp32 XNNPACK .pte"),
    ("int8 XNNPACK .pte", "int8", "model.pte", "fp32 XNNPACK .pte"),
    ("fp32 .onnx", "fp32", "model.onnx", "fp32 .onnx"),
    ("int8 .onnx", "int8", "model.onnx", "fp32 .onnx"),
    ("int4 .onnx", "int4", "model.onnx", "fp32 .onnx"),
]


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export fp32/int8 artifacts and measure size, load time, forward time, peak RSS, parity, fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="smollm2", help="smollm2 (default) or a local HF causal-LM folder")
    p.add_argument("--work", default="runs/bench-export", help="folder for the artifacts (default runs/bench-export)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--seq-len", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward calls per artifact, median (default 5)")
    p.add_argument("--reuse", action="store_true", help="reuse artifact folders that already have a manifest")
    p.add_argument("--int4", action="store_true", help="also export and measure an int4 .onnx")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per child process (default 1800)")
    p.set_defaults(func=run)


def _child(args: list[str], timeout: int) -> dict:
    cmd = [sys.executable, "-m", "cooperllm_app.bench.export_child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = "\n".join(proc.stderr.splitlines()[-15:])
    raise RuntimeError(f"{' '.join(args[:2])} failed (exit {proc.returncode}):\n{tail}")


def run(args: argparse.Namespace) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n for n in EXPORTS if n not in OPTIONAL or getattr(args, OPTIONAL[n])]
    export_cost: dict[str, dict] = {}
    for name in names:
        out = work / name
        if args.reuse and (out / "manifest.json").is_file():
            timings = read_manifest(out, verify_hashes=False).validation.get("timings_s", {})
            export_cost[name] = {
                "wall_s": sum(timings.values()),
                "peak_rss_mb": float("nan"),
                "cpu_s": float("nan"),
                "timings_s": timings,
                "reused": True,
            }
            print(f"reusing {out} (exported earlier: stage times from its manifest)")
            continue
        request = {
            "model": args.model,
            "out": str(out),
            "task": TaskSpec().to_dict(),
            "adapter": AdapterSpec().to_dict(),
            "batch_size": args.batch,
            "seq_len": args.seq_len,
            **EXPORTS[name],
        }
        print(f"exporting {name} ({', '.join(EXPORTS[name]['formats'])}, {EXPORTS[name]['quant']}) ...", flush=True)
        export_cost[name] = _child(["export", json.dumps(request)], args.timeout)
        print(
            f"  {export_cost[name]['wall_s']:.0f} s, peak RSS {export_cost[name]['peak_rss_mb']:.0f} MB, "
            f"validation {'passed' if export_cost[name]['passed'] else 'FAILED'}",
            flush=True,
        )

    manifests = {n: read_manifest(work / n) for n in names}
    print("measuring eager PyTorch fp32 (baseline) ...", flush=True)
    base = _child(["eager", args.model, str(work / "fp32"), str(args.repeats)], args.timeout)
    rows = []
    for label, name, file, ref in ARTIFACTS:
        if name not in names:
            continue
        print(f"measuring {label} ...", flush=True)
        r = _child(["run", str(work / name), file, str(args.repeats)], args.timeout)
        v = manifests[name].validation["graphs"][file]
        fid = [f["rel_err"] for f in v["fidelity"] if f["eps"] == 1e-3]
        r.update(
            label=label,
            ref=ref,
            file_mb=(work / name / file).stat().st_size / 1e6,
            abs_diff=v["parity"]["abs_diff"],
            fidelity_1e3=max(fid),
            passed=v["passed"],
            delegation=v.get("delegation"),
        )
        rows.append(r)
    size = {r["label"]: r["file_mb"] for r in rows}
    print()
    print(
        f"SmolLM2-style table: model {args.model}, batch {args.batch} × seq {args.seq_len}, median of "
        f"{args.repeats} forward calls, each artifact in a fresh process"
    )
    head = (
        f"| {'artifact':<20} | {'file MB':>8} | {'vs fp32':>7} | {'load s':>6} | {'forward ms':>10} | "
        f"{'vs eager':>8} | {'peak RSS MB':>11} | {'torch in proc':>13} | {'loss':>8} | {'abs Δ vs eager':>14} | "
        f"{'fidelity ε=1e-3':>15} | {'checks':>6} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    print(
        f"| {'eager PyTorch fp32':<20} | {'-':>8} | {'-':>7} | {base['load_s']:>6.2f} | {base['forward_ms']:>10.1f} |"
        f" {'1.00x':>8} | {base['peak_rss_mb']:>11.0f} | {'yes':>13} | {base['loss']:>8.5f} | {'-':>14} | "
        f"{'-':>15} | {'-':>6} |"
    )
    for r in rows:
        ratio = r["file_mb"] / size[r["ref"]] if r["ref"] in size else float("nan")
        print(
            f"| {r['label']:<20} | {r['file_mb']:>8.1f} | {ratio * 100:>6.1f}% | {r['load_s']:>6.2f} | "
            f"{r['forward_ms']:>10.1f} | {r['forward_ms'] / base['forward_ms']:>7.2f}x | {r['peak_rss_mb']:>11.0f} |"
            f" {'yes' if r['torch_imported'] else 'no':>13} | {r['loss']:>8.5f} | {r['abs_diff']:>14.2e} | "
            f"{r['fidelity_1e3'] * 100:>14.3f}% | {'PASS' if r['passed'] else 'FAIL':>6} |"
        )
    print(
        "peak RSS of .pte rows includes libtorch: the ExecuTorch Python runtime imports torch (the torch-free "
        "native runner is device_runtime's)."
    )
    for r in rows:
        if r.get("delegation"):
            d = r["delegation"]
            print(
                f"{r['label']}: XNNPACK delegated {d['delegated_ops']} ops in {d['delegated_subgraphs']} subgraphs, "
                f"{d['non_delegated_ops']} outside"
            )
    if export_cost:
        print("\nexport cost (each export in its own process, with validation):")
        for name, c in export_cost.items():
            cpu = c.get("cpu_s", float("nan"))
            print(
                f"  {name:<14} {c['wall_s']:>6.0f} s wall {cpu:>6.0f} s CPU  peak RSS {c['peak_rss_mb']:>6.0f} MB"
                f"{'  (reused: stage times from its manifest)' if c.get('reused') else ''}  stages {c['timings_s']}"
            )
    result = {
        "baseline": base,
        "rows": rows,
        "export_cost": export_cost,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "model": args.model,
    }
    (work / "bench_export.json").write_text(json.dumps(result, indent=1))
    print(f"\nresults: {work / 'bench_export.json'}")
    failed = [r["label"] for r in rows if not r["passed"]]
    return 1 if failed else 0
