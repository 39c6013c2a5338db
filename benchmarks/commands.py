"""What the benchmarks that run the real command line share: the repository root and one way to run a command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RE2TAL = [sys.executable, "-m", "re2tal_cli"]


def run(cmd: list, threads: int) -> str:
    """Run `cmd` from the repository root with `threads` OpenMP threads; its stdout, or exit with its stderr's end."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr[-2000:]}")
    return proc.stdout
