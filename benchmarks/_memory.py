"""Peak resident memory of this process (Linux), shared by the benchmarks."""

from __future__ import annotations


def hwm_mb() -> float:
    """VmHWM (the resident-memory high-water mark) in MB; NaN where /proc is missing."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")
