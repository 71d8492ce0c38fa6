"""Export-time checks: the artifact computes the same function as the eager module, finely enough for ZO.

Parity: runtime loss and label logits vs the eager fp32 module of the same (quantized) function.
Fidelity: the projected gradient (L(θ+εz) − L(θ−εz))/2ε that a device reports, for seeded portable directions z and
several ε, vs the same finite difference in eager fp64 — what zeroth-order training actually reads from the graph.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cooperllm.layout import ParamLayout
from cooperllm.tokenization import EncodedBatch
from exporters.inputs import direction, graph_inputs

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
FIDELITY_RTOL = 0.05
FIDELITY_EPS = (1e-2, 1e-3)
FIDELITY_SEEDS = (0, 1, 2)

Runner = Callable[[Sequence[np.ndarray]], tuple[float, np.ndarray]]


class EagerFunction:
    """The eager module as a function of (batch, flat θ) in a given float dtype (fp64 is the fidelity reference)."""

    def __init__(self, module: nn.Module, layout: ParamLayout, dtype: torch.dtype):
        self.module = module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)
        self.layout = layout
        self.dtype = dtype

    def __call__(self, batch: EncodedBatch, theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = {
            t.name: torch.from_numpy(np.asarray(theta[t.offset : t.offset + t.size]).reshape(t.shape)).to(self.dtype)
            for t in self.layout.tensors
        }
        args = (
            torch.from_numpy(batch.input_ids),
            torch.from_numpy(batch.attention_mask),
            torch.from_numpy(batch.labels),
        )
        with torch.no_grad():
            loss, logits = torch.func.functional_call(self.module, params, args)
        return float(loss), logits.to(torch.float64).numpy()


def validate_graph(
    runner: Runner,
    eager32: EagerFunction,
    eager64: EagerFunction,
    batch: EncodedBatch,
    theta: np.ndarray,
    seeds: Sequence[int] = FIDELITY_SEEDS,
    eps_values: Sequence[float] = FIDELITY_EPS,
) -> dict:
    """Parity and fidelity of one artifact; the dict goes into ``manifest.validation`` under the graph's file."""
    layout = eager32.layout
    theta = np.asarray(theta, dtype=np.float32)
    loss_rt, logits_rt = runner(graph_inputs(batch, theta, layout))
    loss_ref, logits_ref = eager32(batch, theta)
    loss_64, _ = eager64(batch, theta.astype(np.float64))
    parity = {
        "loss": loss_rt,
        "eager_loss": loss_ref,
        "eager_fp64_loss": loss_64,
        "abs_diff": abs(loss_rt - loss_ref),
        "max_logit_diff": float(np.max(np.abs(logits_rt - logits_ref))),
        "atol": PARITY_ATOL,
    }
    parity["passed"] = bool(parity["abs_diff"] <= PARITY_ATOL and parity["max_logit_diff"] <= 10 * PARITY_ATOL)
    fidelity = []
    for seed in seeds:
        z = direction(seed, layout)
        z64 = z.astype(np.float64)
        for eps in eps_values:
            plus = runner(graph_inputs(batch, theta + np.float32(eps) * z, layout))[0]
            minus = runner(graph_inputs(batch, theta - np.float32(eps) * z, layout))[0]
            g_rt = (plus - minus) / (2 * eps)
            p64 = eager64(batch, theta.astype(np.float64) + eps * z64)[0]
            m64 = eager64(batch, theta.astype(np.float64) - eps * z64)[0]
            g_ref = (p64 - m64) / (2 * eps)
            fidelity.append(fidelity_entry(seed, eps, g_rt, g_ref))
    result = {
        "parity": parity,
        "fidelity": fidelity,
        "fidelity_rtol": FIDELITY_RTOL,
        "passed": bool(parity["passed"] and all(f["passed"] for f in fidelity)),
    }
    return result


def max_rel_err(result: dict, eps: float) -> float:
    errs = [f["rel_err"] for f in result["fidelity"] if f["eps"] == eps]
    return max(errs) if errs else float("nan")


def format_table(results: dict[str, dict]) -> str:
    """One row per artifact: loss, |Δ| vs eager, worst fidelity error per ε, delegation, verdict."""
    eps_cols = sorted({f["eps"] for r in results.values() for f in r["fidelity"]}, reverse=True)
    head = (
        f"{'artifact':<26} {'MB':>8} {'loss':>10} {'|Δ| eager':>10} {'max|Δlogit|':>11} "
        + " ".join(f"{'fid ε=' + format(e, 'g'):>10}" for e in eps_cols)
        + f" {'delegated':>10} {'result':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        p = r["parity"]
        deleg = r.get("delegation")
        deleg_s = f"{deleg['delegated_ops']}/{deleg['delegated_ops'] + deleg['non_delegated_ops']}" if deleg else "-"
        mb = f"{r['file_mb']:.1f}" if "file_mb" in r else "-"  # a bucket's row: the same file as its graph's
        lines.append(
            f"{name:<26} {mb:>8} {p['loss']:>10.5f} {p['abs_diff']:>10.2e} "
            f"{p['max_logit_diff']:>11.2e} "
            + " ".join(f"{max_rel_err(r, e) * 100:>9.3f}%" for e in eps_cols)
            + f" {deleg_s:>10} {'PASS' if r['passed'] else 'FAIL':>7}"
        )
    for name, r in results.items():
        deleg = r.get("delegation")
        if deleg and deleg["non_delegated_by_op"]:
            ops = ", ".join(f"{op}×{n}" for op, n in deleg["non_delegated_by_op"].items())
            lines.append(f"{name}: outside the XNNPACK delegate: {ops}")
    return "\n".join(lines)


def fidelity_entry(seed: int, eps: float, g_runtime: float, g_fp64: float) -> dict:
    """One ZO-fidelity check: the runtime's projected gradient vs eager fp64's, within ``FIDELITY_RTOL``."""
    rel = abs(g_runtime - g_fp64) / max(abs(g_fp64), 1e-30)
    return {
        "seed": seed,
        "eps": eps,
        "projected_grad": g_runtime,
        "fp64_projected_grad": g_fp64,
        "rel_err": rel,
        "passed": bool(rel <= FIDELITY_RTOL),
    }
