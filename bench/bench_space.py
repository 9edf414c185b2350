"""Space figures on this machine (a script, not a test): start-up, call latency, peak memory.

    python bench/bench_space.py [--image PATH] [--calls 10]

Starts ``python space/app.py`` as a user would, times it until the page answers,
times the very first ``/predict`` (the model is warmed up at start-up), then
calls ``/predict`` (3 layers) through ``gradio_client`` with a 224 px X-ray
and with a 1600x1300 grayscale PNG like the originals, and reads the server's
peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, print_table, process_memory_mib, running_space

DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "chest_xray" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--port", type=int, default=7899)
    args = ap.parse_args()

    from gradio_client import Client, handle_file
    from PIL import Image

    big = Path(tempfile.mkdtemp()) / "original_like.png"
    Image.open(args.image).convert("L").resize((1600, 1300), Image.Resampling.BICUBIC).save(big)
    t0 = time.perf_counter()
    with running_space(args.port) as space:
        client = Client(space.url, verbose=False)
        rows = [("start-up to ready (s)", f"{space.ready_s:.1f}")]
        first = None
        for name, image in (("224 px JPEG", args.image), ("1600x1300 grayscale PNG", big)):
            t = time.perf_counter()
            client.predict(handle_file(str(image)), 3, api_name="/predict")
            first = first if first is not None else time.perf_counter() - t
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                client.predict(handle_file(str(image)), 3, api_name="/predict")
                times.append(time.perf_counter() - t)
            rows.append(
                (f"/predict, 3 layers, {name}: median / max (s)", f"{statistics.median(times):.2f} / {max(times):.2f}")
            )
            if len(rows) == 2:
                warm = statistics.median(times)
                rows.append(("first /predict after start-up (s)", f"{first:.2f} ({first / warm:.2f}x a warm call)"))
        rows.append(("server peak RSS (MiB)", f"{process_memory_mib(space.proc.pid, 'VmHWM'):.0f}"))
    print(f"image: {args.image}; {args.calls} calls each; total {time.perf_counter() - t0:.0f} s")
    print_table(rows)


if __name__ == "__main__":
    main()
