"""Space figures on this machine (a script, not a test): start-up, call latency, peak memory.

    python bench/bench_space.py [--image PATH] [--calls 10]

Starts ``python space/app.py`` as a user would, times it until the page answers,
then calls ``/predict`` (3 layers) through ``gradio_client`` with a 224 px X-ray
and with a 1600x1300 grayscale PNG like the originals, and reads the server's
peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, process_memory_mib  # noqa: E402

DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "chest_xray" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the app did not answer in time")


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
    env = {**os.environ, "GRADIO_SERVER_PORT": str(args.port), "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "space" / "app.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{args.port}/"
        ready = wait_ready(url, proc)
        client = Client(url, verbose=False)
        rows = [("start-up to ready (s)", f"{ready:.1f}")]
        for name, image in (("224 px JPEG", args.image), ("1600x1300 grayscale PNG", big)):
            client.predict(handle_file(str(image)), 3, api_name="/predict")
            times = []
            for _ in range(args.calls):
                t = time.perf_counter()
                client.predict(handle_file(str(image)), 3, api_name="/predict")
                times.append(time.perf_counter() - t)
            rows.append(
                (f"/predict, 3 layers, {name}: median / max (s)", f"{statistics.median(times):.2f} / {max(times):.2f}")
            )
        rows.append(("server peak RSS (MiB)", f"{process_memory_mib(proc.pid, 'VmHWM'):.0f}"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"image: {args.image}; {args.calls} calls each; total {time.perf_counter() - t0:.0f} s")
    print_table(rows)


if __name__ == "__main__":
    main()
