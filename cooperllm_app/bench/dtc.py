"""``cooperllm bench dtc``: DTC frame size, fidelity and speed on real SmolLM2 guidance tensors.

The tensors are what the cloud publishes: per-block orthonormal bases V_b (QR of a window of m real backprop
gradients of the LoRA θ) and the projections c_b. Baselines measured in the same run: raw float32 bytes and
zstd-compressed float32.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import zstandard
from tqdm import tqdm

from cooperllm import dtc
from cooperllm.adapter import AdapterSpec
from cooperllm.data import load_dataset
from cooperllm.link import Link, LinkSpec, LinkTransport
from cooperllm.models import TOKENIZER_FILE, load_causal_lm, resolve_model
from cooperllm.tokenization import PromptEncoder
from cooperllm.zgr import Report
from cooperllm_app.commands.options import add_data_options, add_model_options, add_task_options, task_from_args

log = logging.getLogger(__name__)


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dtc",
        help="DTC codec on real SmolLM2 guidance: bits vs cosine vs bytes vs MB/s, adaptive mode, reports",
        description="Compute real backprop gradients of SmolLM2's LoRA θ on SST-2 dev batches, form per-block "
        "orthonormal guidance bases V_b (QR of a window of m gradients) and c_b, and encode them with every fixed "
        "bit width and the adaptive mode. Baselines: raw float32 and zstd-only float32, measured in the same run.",
    )
    add_model_options(p)
    add_data_options(p, default_data="sst2/dev.tsv")
    add_task_options(p)
    p.add_argument("--batch-size", type=int, default=16, help="examples per gradient (default 16)")
    p.add_argument("--warmup-steps", type=int, default=4, help="AdamW steps before the window, so LoRA B ≠ 0")
    p.add_argument("--m", type=int, default=4, help="guidance subspace size = gradients in the window (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the warm-up/window steps")
    p.add_argument("--cosine", type=float, default=0.999, help="adaptive mode's cosine target (default 0.999)")
    p.add_argument("--block-size", type=int, default=256, help="values per quantization chunk (default 256)")
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats for MB/s, median (default 5)")
    p.add_argument("--reports", type=int, default=960, help="reports in the report-batch measurement (default 960)")
    p.add_argument(
        "--links",
        nargs="*",
        default=["10mbit:50ms", "2mbit:100ms"],
        help="link specs for the download-time lines (default 10mbit:50ms 2mbit:100ms)",
    )
    p.add_argument(
        "--measure-link",
        default="10mbit:50ms",
        help="also download the frames over this emulated link from a local HTTP server and time it ('none' to "
        "skip; default 10mbit:50ms)",
    )
    p.add_argument("--save", help="also save the guidance tensors to this .npz file")
    p.add_argument("--load", help="use guidance tensors from a .npz written by --save (skips the model)")
    p.set_defaults(func=run)


def collect_guidance(args: argparse.Namespace) -> dict[str, object]:
    """Real guidance from SmolLM2: V_b, c_b per block after ``warmup`` AdamW steps and a window of m gradients."""
    import torch  # deferred: loads torch (heavy; not needed at import)

    from cooperllm.modeling import build_task_model, theta_from_module  # deferred: loads torch

    torch.manual_seed(0)
    task = task_from_args(args)
    model_dir = resolve_model(args.model)
    encoder = PromptEncoder(model_dir / TOKENIZER_FILE, task, args.seq_len)
    dataset = load_dataset(args.data, args.text_column, args.label_column, task.label_names, args.header)
    module, layout = build_task_model(load_causal_lm(model_dir), encoder, AdapterSpec())
    params = dict(module.named_parameters())
    trainable = [params[n] for n in layout.names]
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    order = np.random.default_rng(0).permutation(len(dataset))
    grads = []
    steps = args.warmup_steps + args.m
    for step in tqdm(range(steps), desc="backprop steps", unit="step"):
        idx = order[(step * args.batch_size) % len(dataset) :][: args.batch_size]
        batch = encoder.encode([dataset.texts[i] for i in idx], dataset.labels[idx])
        opt.zero_grad()
        loss, _ = module(*(torch.from_numpy(a) for a in (batch.input_ids, batch.attention_mask, batch.labels)))
        loss.backward()
        if step >= args.warmup_steps:
            grads.append(layout.flatten({n: params[n].grad.detach().numpy() for n in layout.names}))
        opt.step()
        log.info("step %d loss %.4f", step, loss.item())
    window = np.stack(grads, axis=1).astype(np.float64)  # n × m
    bases, coeffs = [], []
    for block in layout.blocks:
        q, _ = np.linalg.qr(window[block.slice])
        bases.append(q.astype(np.float32))
        coeffs.append((q.T @ window[block.slice, -1]).astype(np.float32))
    theta = theta_from_module(module, layout)
    return {"bases": bases, "coeffs": coeffs, "theta": theta, "names": [b.name for b in layout.blocks]}


@dataclass
class Row:
    mode: str
    cosine: float
    rel_l2: float
    frame_bytes: int
    n_values: int
    enc_mbs: float
    dec_mbs: float

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.frame_bytes / self.n_values


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(tensors: list, mode: str, encode_fn, decode_fn, repeats: int) -> Row:
    """Encode every tensor as its own frame (as the cloud publishes them); fidelity over the concatenation."""

    frames = [encode_fn(t) for t in tensors]
    decoded = [decode_fn(f) for f in frames]
    x = np.concatenate([t.ravel() for t in tensors]).astype(np.float64)
    y = np.concatenate([d.ravel() for d in decoded]).astype(np.float64)
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    rel = float(np.linalg.norm(x - y) / np.linalg.norm(x))
    mb = x.size * 4 / 1e6
    enc = _median_s(lambda: [encode_fn(t) for t in tensors], repeats)
    dec = _median_s(lambda: [decode_fn(f) for f in frames], repeats)
    return Row(mode, cos, rel, sum(len(f) for f in frames), int(x.size), mb / enc, mb / dec)


def run(args: argparse.Namespace) -> int:

    if args.load:
        data = np.load(args.load)
        bases = [data[f"V{i}"] for i in range(int(data["n_blocks"]))]
        coeffs = [data[f"c{i}"] for i in range(int(data["n_blocks"]))]
    else:
        g = collect_guidance(args)
        bases, coeffs = g["bases"], g["coeffs"]
        if args.save:
            np.savez(
                args.save,
                n_blocks=len(bases),
                **{f"V{i}": v for i, v in enumerate(bases)},
                **{f"c{i}": c for i, c in enumerate(coeffs)},
            )
    n_values = sum(v.size for v in bases)
    print(
        f"guidance: {len(bases)} blocks, V_b {bases[0].shape} float32 ({n_values:,} values, "
        f"{n_values * 4 / 1e6:.2f} MB), c_b ({coeffs[0].size},) per block"
    )
    print(f"frames: one per block; chunk {args.block_size} values; zstd level {args.level}; median of {args.repeats}")
    zc = zstandard.ZstdCompressor(level=args.level)
    zd = zstandard.ZstdDecompressor()
    rows = [
        measure(
            bases,
            "raw float32 (baseline)",
            lambda t: t.astype("<f4").tobytes(),
            lambda f: np.frombuffer(f, "<f4"),
            args.repeats,
        ),
        measure(
            bases,
            "zstd float32 (baseline)",
            lambda t: zc.compress(t.astype("<f4").tobytes()),
            lambda f: np.frombuffer(zd.decompress(f), "<f4"),
            args.repeats,
        ),
    ]
    for bits in (*dtc.BITS_CHOICES, dtc.LOSSLESS_BITS):
        rows.append(
            measure(
                bases,
                f"DTC {bits}-bit",
                lambda t, b=bits: dtc.encode(t, bits=b, block_size=args.block_size, level=args.level),
                dtc.decode,
                args.repeats,
            )
        )
    delta = 1.0 - args.cosine
    adaptive = measure(
        bases,
        f"DTC adaptive cos≥{args.cosine}",
        lambda t: dtc.encode(t, cosine_budget=delta, block_size=args.block_size, level=args.level),
        dtc.decode,
        args.repeats,
    )
    stoch = measure(
        bases,
        f"DTC adaptive cos≥{args.cosine} stoch.",
        lambda t: dtc.encode(t, cosine_budget=delta, stochastic=True, block_size=args.block_size, level=args.level),
        dtc.decode,
        args.repeats,
    )
    per_chunk = measure(
        bases,
        f"DTC per-chunk cos≥{args.cosine}",
        lambda t: dtc.encode(t, cosine_budget=delta, allocation="chunk", block_size=args.block_size, level=args.level),
        dtc.decode,
        args.repeats,
    )
    rows += [adaptive, stoch, per_chunk]
    raw = rows[0].frame_bytes
    print(
        f"{'mode':<36} {'cosine':>10} {'rel L2':>9} {'bytes':>10} {'bits/val':>9} {'vs f32':>7} "
        f"{'enc MB/s':>9} {'dec MB/s':>9}"
    )
    for r in rows:
        print(
            f"{r.mode:<36} {r.cosine:>10.6f} {r.rel_l2:>9.2e} {r.frame_bytes:>10,} {r.bits_per_value:>9.3f} "
            f"{r.frame_bytes / raw:>7.3f} {r.enc_mbs:>9.1f} {r.dec_mbs:>9.1f}"
        )
    hist = np.zeros(33, dtype=np.int64)
    for v in bases:
        info = dtc.inspect_frame(dtc.encode(v, cosine_budget=delta, block_size=args.block_size, level=args.level))
        hist += np.bincount(info.bits, minlength=33)
    print("adaptive chunk bits: " + ", ".join(f"{b}-bit {hist[b]}" for b in range(33) if hist[b]))
    c_frames = [dtc.encode(c, bits=32) for c in coeffs]
    print(f"c_b (lossless, {coeffs[0].size} values): {sum(map(len, c_frames)) / len(c_frames):.1f} bytes per block")
    ok_size = adaptive.frame_bytes * 6 <= raw and adaptive.bits_per_value <= 5.3
    print(
        f"target adaptive cos≥{args.cosine}: ≤ 1/6 of float32 and ≤ 5.3 bits/value: "
        f"{adaptive.frame_bytes / raw:.4f} of float32, {adaptive.bits_per_value:.3f} bits/value, "
        f"cosine {adaptive.cosine:.6f} -> {'PASS' if ok_size and adaptive.cosine >= args.cosine else 'FAIL'}"
    )
    _link_times(
        args.links,
        {"raw float32": raw, "zstd float32": rows[1].frame_bytes, "DTC adaptive": adaptive.frame_bytes},
        len(bases),
    )
    if args.measure_link != "none":
        frames = {
            "raw float32": [v.astype("<f4").tobytes() for v in bases],
            "DTC adaptive": [dtc.encode(v, cosine_budget=delta, block_size=args.block_size) for v in bases],
        }
        _measure_link(args.measure_link, frames)
    _bench_reports(args.reports, args.repeats)
    return 0


def _link_times(specs: list[str], sizes: dict[str, int], n_frames: int) -> None:
    """Ideal download time of one round's guidance on each emulated link (latency once per frame request)."""

    for text in specs:
        spec = LinkSpec.parse(text)
        cells = [
            f"{name} {n_frames * 2 * spec.latency_s + spec.transfer_time(size) - spec.latency_s:.2f} s"
            for name, size in sizes.items()
        ]
        print(f"guidance download over {text} (ideal, {n_frames} sequential requests): " + ", ".join(cells))


def _measure_link(spec_text: str, frames: dict[str, list[bytes]]) -> None:
    """Fetch every frame, one request each, from a real HTTP server on 127.0.0.1 through the emulated link."""

    blobs = {f"/{name.replace(' ', '_')}/{i}": f for name, fs in frames.items() for i, f in enumerate(fs)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = blobs[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    link = Link(spec_text)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with httpx.Client(base_url=url, transport=LinkTransport(link), timeout=600) as client:
            client.get(next(iter(blobs)))  # connect once outside the timing
            for name, fs in frames.items():
                t0 = time.perf_counter()
                got = [client.get(f"/{name.replace(' ', '_')}/{i}").content for i in range(len(fs))]
                took = time.perf_counter() - t0
                assert got == fs
                ideal = sum(2 * link.spec.latency_s + 8 * len(f) / link.spec.down_bps for f in fs)
                print(
                    f"measured download over {spec_text}: {name} {sum(map(len, fs)):,} bytes in {took:.2f} s "
                    f"(ideal {ideal:.2f} s, ratio {took / ideal:.2f})"
                )
    finally:
        server.shutdown()
        server.server_close()


def _bench_reports(n: int, repeats: int) -> None:
    """Report batches as a device uploads them: seeds from a per-round base, 30 blocks, float32 scalars."""

    rng = np.random.default_rng(0)
    base = int(rng.integers(0, 2**62))
    reports = [
        Report(
            seed=base + i,
            block=i % 30,
            step=i // 30,
            scalar=float(np.float32(rng.standard_normal() * 3)),
            n_examples=16,
        )
        for i in range(n)
    ]
    frame = dtc.encode_reports(reports)
    assert dtc.decode_reports(frame) == reports
    enc = _median_s(lambda: dtc.encode_reports(reports), repeats)
    dec = _median_s(lambda: dtc.decode_reports(frame), repeats)
    naive = n * (8 + 4 + 8 + 4 + 4)  # int64 seed, int32 block, int64 step, float32 scalar, int32 n
    print(
        f"reports: {n} per batch -> {len(frame):,} bytes = {len(frame) / n:.2f} bytes/report "
        f"(fixed-width struct baseline {naive / n:.0f} bytes/report); encode {enc * 1e3:.2f} ms, "
        f"decode {dec * 1e3:.2f} ms; target ≤ 16 -> {'PASS' if len(frame) / n <= 16 else 'FAIL'}"
    )
