"""Helpers the bench scripts share: a table printer, process memory readings, the Space launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def process_memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's memory from /proc: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    """Seconds until ``url`` answers 200; exits if the app dies or never answers."""
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


@dataclass
class RunningSpace:
    proc: subprocess.Popen
    url: str
    ready_s: float


@contextmanager
def running_space(port: int) -> Iterator[RunningSpace]:
    """``python space/app.py`` on 127.0.0.1:``port``, as a user starts it; stopped on exit."""
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    cmd = [sys.executable, str(ROOT / "space" / "app.py")]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        yield RunningSpace(proc, url, wait_ready(url, proc))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
