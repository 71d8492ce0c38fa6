"""What a simulation measured, as JSON lines that survive a kill: the device journal and the per-round metrics.

``journal.jsonl``: one line per device task as it finishes (bytes up/down over the emulated link, seconds, peak
RSS, guidance bytes), so a round interrupted after some devices finished keeps their figures.
``metrics.jsonl``: one ``{"kind": "baseline"}`` line (θ₀ on the test file), then one ``{"kind": "round"}`` line per
round, written once the round closed and θ_{r+1} was scored. Lines are appended with fsync; a line torn by a kill
is dropped (and cut from the file) when the folder is read again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from cooperllm.evaluate import EvalResult

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.jsonl"
METRICS_FILE = "metrics.jsonl"
ROUND_FIELDS = (
    "round",
    "accuracy",
    "loss",
    "bytes_up",
    "bytes_down",
    "round_s",
    "wall_s",
    "device_peak_rss_mb",
    "lam",
    "guidance_bits",
)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def pack_correct(correct: np.ndarray) -> str:
    """Which examples θ got right, as hex of the bits packed LSB-first (a metrics line's ``correct_bits``)."""
    return np.packbits(correct, bitorder="little").tobytes().hex()


def evaluation_of(line: dict | None) -> EvalResult | None:
    """A metrics line's evaluation with its per-example results (for paired tests); None where it has none."""
    if not line or line.get("accuracy") is None or not line.get("correct_bits"):
        return None
    n = int(line["n_eval"])
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(line["correct_bits"]), np.uint8), bitorder="little")[:n]
    return EvalResult(float(line["accuracy"]), float(line["loss"]), n, bits.astype(bool))


STRAGGLER_FACTOR = 2.0


def stragglers(seconds: dict[int, float]) -> list[int]:
    """The round's devices that took more than STRAGGLER_FACTOR times the median device's time: the ones a round
    that closes on all K waits for (a deadline or quorum below K would close without them)."""
    if not seconds:
        return []
    median = float(np.median(list(seconds.values())))
    return sorted(d for d, s in seconds.items() if s > STRAGGLER_FACTOR * median)


def mean_of(values: list[float | None]) -> float | None:
    """Mean of the known values (None where nothing was recorded)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def append_line(path: Path, obj: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path, repair: bool = False) -> list[dict]:
    """Every complete line (a line is complete with its newline); a torn tail left by a kill mid-write is
    skipped, and cut from the file if ``repair``. A bad complete line is corruption and raises."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if raw[end:].strip():
        log.warning("%s: dropping a torn last line (%d bytes)", path, len(raw) - end)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(end)
    out = []
    for i, line in enumerate(raw[:end].split(b"\n")):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {i + 1} is not JSON; the file is corrupt") from None
    return out


class RunRecord:
    """The journal and the metrics of one run folder."""

    def __init__(self, run_dir: Path):
        self.journal_path = run_dir / JOURNAL_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self.journal = read_lines(self.journal_path, repair=True)
        self.lines = read_lines(self.metrics_path, repair=True)

    @property
    def baseline(self) -> dict | None:
        return next((m for m in self.lines if m.get("kind") == "baseline"), None)

    @property
    def rounds(self) -> list[dict]:
        return [m for m in self.lines if m.get("kind") == "round"]

    def done(self) -> set[int]:
        return {m["round"] for m in self.rounds}

    def last(self) -> dict | None:
        rounds = self.rounds
        return rounds[-1] if rounds else None

    def add_device_result(self, result: dict) -> None:
        self.journal.append(result)
        append_line(self.journal_path, result)

    def add_line(self, line: dict) -> None:
        self.lines.append(line)
        append_line(self.metrics_path, line)

    def device_results(self, round_: int) -> dict[int, dict]:
        """Per device of the round, its last result that did the work (skips say 'done before a restart')."""
        out: dict[int, dict] = {}
        for r in self.journal:
            if r.get("round") == round_ and not r.get("skipped"):
                out[int(r["device"])] = r
        return out


def round_line(
    round_: int,
    devices: list[int],
    results: dict[int, dict],
    summary,
    evaluation: dict | None,
    round_s: float,
    previous: dict | None,
    resumed: bool,
    local_steps: int,
) -> dict:
    """One metrics line: test accuracy/loss of θ_{r+1}, bytes per device, wall-clock, peak RSS, λ, guidance bits."""
    up = {str(d): results[d]["bytes_up"] for d in devices if d in results}
    down = {str(d): results[d]["bytes_down"] for d in devices if d in results}
    n = len(up)  # devices whose figures were recorded (none when every one finished while the simulation was down)
    g_bytes = sum(r.get("guidance_bytes", 0) for r in results.values())
    g_values = sum(r.get("guidance_values", 0) for r in results.values())
    prev_wall = previous["wall_s"] if previous else 0.0
    prev_bytes = previous["cum_bytes"] if previous else 0
    round_bytes = sum(up.values()) + sum(down.values())
    return {
        "kind": "round",
        "round": round_,
        "devices": devices,
        "accuracy": None if evaluation is None else evaluation["accuracy"],
        "loss": None if evaluation is None else evaluation["loss"],
        "n_eval": None if evaluation is None else evaluation["n_eval"],
        "eval_s": None if evaluation is None else evaluation["eval_s"],
        "correct_bits": None if evaluation is None else evaluation.get("correct_bits"),
        "bytes_up": up,
        "bytes_down": down,
        "bytes_up_mean": sum(up.values()) / n if n else None,
        "bytes_down_mean": sum(down.values()) / n if n else None,
        "cum_bytes": prev_bytes + round_bytes,
        "round_s": round(round_s, 3),
        "wall_s": round(prev_wall + round_s, 3),
        "device_s_mean": round(sum(r["seconds"] for r in results.values()) / n, 3) if n else None,
        "devices_done": len(results),
        "device_steps_per_s": round(len(results) * local_steps / round_s, 3) if round_s else None,
        "stragglers": stragglers({d: r["seconds"] for d, r in results.items()}),
        "device_peak_rss_mb": max((r["peak_rss_mb"] for r in results.values()), default=None),
        "device_torch": any(r.get("torch_loaded") for r in results.values()),
        "reports": summary.n_reports,
        "lam": summary.lam,
        "rectifier": summary.rectifier,  # blocks: per block λ, b_k², s_k², τ_k², ā_k, c_k, N; axis: the test along ĉ
        "guidance_bits": round(8.0 * g_bytes / g_values, 3) if g_values else None,
        "missing_device_stats": sorted(set(devices) - set(results)),
        "resumed": resumed,
    }
