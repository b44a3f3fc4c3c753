"""The four benchmarks (eval/bench_*.py) run end to end: `--help` for each (fast), and `--smoke` for each (a tiny
run of the same code path, on the real weights) ending in its summary line(s) with a number."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Benchmark module -> the summary lines a script reads from its last lines ("<prefix>: <number>").
SUMMARIES = {
    "eval.bench_model": ["jax/torch forward throughput, worst case"],
    "eval.bench_train": ["dar/ce step time"],
    "eval.bench_difficulty": ["vmapped/loop time"],
    "eval.bench_cascade": ["wall-clock/layer speed-up, worst case"],
}


def run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def summary_value(lines: list[str], prefix: str) -> float:
    """The number on the line ``prefix: R`` (the last such line)."""
    pattern = re.compile(rf"^{re.escape(prefix)}: (\S+)\s*$")
    found = [m.group(1) for m in map(pattern.match, lines) if m]
    assert found, f"no line '{prefix}: R' among the last {len(lines)} lines:\n" + "\n".join(lines)
    return float(found[-1])


@pytest.mark.parametrize("module", sorted(SUMMARIES))
def test_help(module):
    proc = run(module, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--smoke" in proc.stdout


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(SUMMARIES))
def test_smoke(module):
    proc = run(module, "--smoke")
    assert proc.returncode == 0, f"{module} --smoke exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = proc.stdout.splitlines()
    assert any(line.startswith("smoke mode:") and "not measurements" in line for line in lines)
    last = lines[-40:]
    for prefix in SUMMARIES[module]:
        summary_value(last, prefix)  # Parses as a float.
