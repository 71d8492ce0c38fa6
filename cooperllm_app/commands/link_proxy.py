"""``cooperllm link-proxy``: an emulated phone link (bandwidth, latency, jitter, loss) in front of a local server."""

from __future__ import annotations

import argparse
import logging
import time

from cooperllm.link import Link
from cooperllm.link_proxy import LinkProxy

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "link-proxy",
        help="TCP proxy on loopback that emulates a device's link (bandwidth, latency, jitter, loss)",
        description="Listen on --listen and forward to --target through an emulated link, so any client (the JVM "
        "core, a device process) sees a phone's network. Spec: RATE[/UPRATE][:LATENCY[:JITTER[:LOSS]]], e.g. "
        "10mbit:50ms or 2mbit:100ms:10ms:1%% (docs/DTC.md §8).",
    )
    p.add_argument("--target", required=True, help="HOST:PORT of the server behind the link")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (default 127.0.0.1, any port)")
    p.add_argument("--spec", default="10mbit:50ms", help="link spec (default 10mbit:50ms)")
    p.add_argument("--seed", type=int, help="seed of the jitter/loss draws")
    p.set_defaults(func=run)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:

    target = _host_port(args.target)
    host, port = _host_port(args.listen)
    link = Link(args.spec, seed=args.seed)
    with LinkProxy(link, target, host=host, port=port) as proxy:
        print(f"link {link.spec} : {proxy.host}:{proxy.port} -> {target[0]}:{target[1]}  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(60)
            s = link.stats
            log.info(
                "connections %d, lost %d, up %d B, down %d B", s.requests, s.lost_requests, s.bytes_up, s.bytes_down
            )
