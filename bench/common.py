"""Helpers the bench scripts share: a table printer and process memory readings."""

from __future__ import annotations

from pathlib import Path


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
