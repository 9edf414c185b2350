"""Load test of the Space on this machine (a script, not a CI test).

    python bench/load_space.py [--image PATH] [--clients 8] [--requests 50] [--soak 200]

Starts ``python space/app.py`` on a loopback port, sends ``--requests`` calls from
``--clients`` concurrent ``gradio_client`` clients and checks that every answer
has the right shape (3 probabilities summing to 1, as many overlays as layers
asked); then keeps going to ``--soak`` calls and compares the server's resident
memory after 20 and after ``--soak`` calls (target: within 10 %). Traffic goes
to 127.0.0.1 only and the run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_space import DEFAULT_IMAGE
from common import process_memory_mib, running_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--soak", type=int, default=200)
    ap.add_argument("--port", type=int, default=7898)
    ap.add_argument("--deadline", type=float, default=900, help="Give up after this many seconds.")
    args = ap.parse_args()

    from gradio_client import Client, handle_file

    started = time.perf_counter()
    with running_space(args.port) as space:
        clients = [Client(space.url, verbose=False) for _ in range(args.clients)]

        def call(i: int) -> tuple[bool, float]:
            if time.perf_counter() - started > args.deadline:
                return False, 0.0
            layers = 1 + i % 3
            t = time.perf_counter()
            try:
                label, gallery, *_ = clients[i % len(clients)].predict(
                    handle_file(str(args.image)), layers, api_name="/predict"
                )
            except Exception as exc:  # a lost or failed request counts against the run
                print(f"request {i} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return False, time.perf_counter() - t
            conf = [c["confidence"] for c in label["confidences"]]
            shown = 1 + layers  # the default map, then each layer's
            ok = len(conf) == 3 and abs(sum(conf) - 1) < 1e-3 and len(gallery) == shown
            return ok, time.perf_counter() - t

        def batch(ids: range) -> list[tuple[bool, float]]:
            with ThreadPoolExecutor(args.clients) as pool:
                return list(pool.map(call, ids))

        t0 = time.perf_counter()
        first = batch(range(20))
        rss20 = process_memory_mib(space.proc.pid)
        first += batch(range(20, args.requests))
        wall = time.perf_counter() - t0
        ok = sum(r[0] for r in first)
        lat = sorted(r[1] for r in first)
        print(
            f"{args.requests} requests from {args.clients} clients: {ok} answered with the right shape, "
            f"{args.requests - ok} wrong or lost; {wall:.1f} s wall, {args.requests / wall:.2f} req/s"
        )
        print(f"latency under load: median {statistics.median(lat):.2f} s, p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s")
        done = args.requests
        while done < args.soak:
            n = min(args.clients * 5, args.soak - done)
            ok += sum(r[0] for r in batch(range(done, done + n)))
            done += n
        rss_end = process_memory_mib(space.proc.pid)
        print(
            f"{done} requests in all, {ok} right; server RSS after 20 requests {rss20:.0f} MiB, "
            f"after {done}: {rss_end:.0f} MiB ({100 * (rss_end - rss20) / rss20:+.1f} %)"
        )


if __name__ == "__main__":
    main()
