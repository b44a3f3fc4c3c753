"""The four benchmarks (eval/bench_*.py) run end to end: `--help` for each (fast), and `--smoke` for each (a tiny
run of the same code path, on the real weights) printing its provenance first and ending in its summary line(s)
with a number; eval/bench_all.sh, which runs them all, is valid bash and names every one."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Benchmark module -> the summary lines a script reads from its last lines ("<prefix>: <number>").
SUMMARIES = {
    "eval.bench_model": ["jax/torch forward throughput, worst case", "bf16 jax/torch forward throughput, worst case",
                         "fraction of GEMM rate"],
    "eval.bench_train": ["jax/torch train step, worst case", "jax train step, fraction of GEMM rate",
                         "dar/ce step time"],
    "eval.bench_difficulty": ["vmapped/loop time"],
    "eval.bench_cascade": ["wall-clock/layer speed-up, worst case"],
}
# The line each benchmark ends with (the summary lines above are among its last 40 lines).
LAST_LINE = {
    "eval.bench_model": "jax/torch forward throughput, worst case",
    "eval.bench_train": "dar/ce step time",
    "eval.bench_difficulty": "vmapped/loop time",
    "eval.bench_cascade": "wall-clock/layer speed-up, worst case",
}
# Text a smoke run's output must contain besides the summary lines.
ALSO_PRINTED = {
    "eval.bench_difficulty": ["| mode | end to end | compile | in training | in prediction | elsewhere | "
                              "training steps | prediction | rest |", "token positions a training run computes",
                              "per-call temporary buffer of the step programs", "| pages | at once | after a pause |"],
    "eval.bench_model": ["GEMM [n, n] @ [n, n]", "Achieved GFLOP/s", "each variant in a process of its own"],
    "eval.bench_train": ["fp32 GEMM [n, n] @ [n, n]", "part 1: each step in a process of its own"],
}
BENCH_ALL = REPO / "eval" / "bench_all.sh"


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
    provenance = [line for line in lines[:5] if line.startswith("provenance: ")]
    assert provenance, "no 'provenance: {...}' line at the start:\n" + "\n".join(lines[:5])
    assert {"packages", "cpu", "git_commit"} <= set(json.loads(provenance[0].removeprefix("provenance: ")))
    last = lines[-40:]
    for prefix in SUMMARIES[module]:
        summary_value(last, prefix)  # Parses as a float.
    assert lines[-1].startswith(LAST_LINE[module] + ": "), lines[-1]
    for text in ALSO_PRINTED.get(module, []):
        assert text in proc.stdout, f"{module} --smoke printed no {text!r}"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("module, args, protocol", [
    ("eval.bench_model", ["--no-bf16", "--no-xla-default"], "all variants in this process (--in-process)"),
    ("eval.bench_train", ["--skip", "devices", "--no-bf16", "--no-ynn-off"], "all steps in this process (--in-process)"),
])
def test_smoke_in_process(module, args, protocol):
    """``--in-process`` (every variant in the benchmark's own process, sessions up to 13) still runs end to end."""
    proc = run(module, "--smoke", "--in-process", *args)
    assert proc.returncode == 0, f"{module} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert protocol in proc.stdout
    assert lines_end_with_summary(proc.stdout.splitlines(), module)


def lines_end_with_summary(lines: list[str], module: str) -> bool:
    summary_value(lines[-40:], SUMMARIES[module][0])
    return lines[-1].startswith(LAST_LINE[module] + ": ")


def test_bench_all_script():
    """eval/bench_all.sh is valid bash, runs every eval/bench_*.py and collects every summary line."""
    proc = subprocess.run(["bash", "-n", str(BENCH_ALL)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = BENCH_ALL.read_text()
    benches = sorted(p.stem for p in (REPO / "eval").glob("bench_*.py"))
    assert benches and {f"eval.{b}" for b in benches} == set(SUMMARIES)
    for name in benches:
        assert f"\nbench {name} " in text, f"eval/bench_all.sh does not run {name}"
    for prefix in (p for prefixes in SUMMARIES.values() for p in prefixes):
        assert prefix in text, f"eval/bench_all.sh does not collect the summary line {prefix!r}"
    assert "--smoke" not in text


def test_padded_token_count_of_stacked_members_is_at_least_the_loops(tmp_path):
    """bench_difficulty's padding count: a stacked lock-step pads every member to the longest member's batch, so
    it can never count fewer token positions than the loop; with one member the two are equal."""
    from cascade_jax import configs, difficulty
    from eval.bench_difficulty import padded_tokens
    from tests import tiny

    model = tiny.make_model_dir(tmp_path / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(tmp_path / "data", n_train=40, n_dev=8, n_test=8)
    base = {"model.name": str(model), "task": "rotten_tomatoes", "source": str(folder), "folds": 2, "seeds": 2,
            "epochs": 2, "batch_size": 4, "max_length": 64, "buckets": (4, 8, 16, 32, 64), "length_grouping": 0}
    plan = difficulty.make_plan(configs.create(difficulty.LabelConfig, {**base, "output_dir": str(tmp_path / "a")}))
    tokens = padded_tokens(plan)
    rows = plan.optim.batch_size * plan.total_steps
    widths = [[b["input_ids"].shape[1] for b in (stacked_batch(plan, m, s) for s in range(plan.total_steps))]
              for m in plan.members]
    assert tokens["loop"] == sum(plan.optim.batch_size * w for ws in widths for w in ws)
    assert tokens["vmapped"] == len(plan.members) * sum(plan.optim.batch_size * max(ws) for ws in zip(*widths))
    assert tokens["vmapped"] >= tokens["loop"] >= rows * 4
    plan.members = plan.members[:1]
    one = padded_tokens(plan)
    assert one["vmapped"] == one["loop"]


def test_the_step_only_comparison_picks_a_lock_step_where_every_member_has_the_same_width():
    from eval.bench_difficulty import same_width_step

    assert same_width_step([[(16, 64), (16, 32)], [(16, 32), (16, 32)], [(16, 64), (16, 64)]]) == 1
    assert same_width_step([[(16, 64), (16, 64)], [(16, 32), (16, 16)]]) == 0
    assert same_width_step([[(16, 64), (16, 32)], [(16, 16), (16, 32)]]) == 0  # None: the first step.


def stacked_batch(plan, member, step):
    from cascade_jax import stacked

    return stacked.group_train_batch(plan, [member], step, False)


@pytest.mark.parametrize("settle", [0, 2])
def test_interleaved_rounds_settle_each_variant_before_timing_it(settle, monkeypatch):
    from eval import machine, workers

    calls: list[str] = []
    timed: list[int] = []
    real_timed = machine.timed

    def spy_timed(fn):
        timed.append(len(calls))  # The position in the log of the call about to be timed.
        return real_timed(fn)

    monkeypatch.setattr(machine, "timed", spy_timed)  # Runner.timed looks it up in the module at call time.
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = workers.interleaved(fns, repeats=4, warmup=1, settle=settle)

    assert calls[:3] == ["a", "b", "c"]  # Warm-up, one each.
    rounds = calls[3:]
    assert len(rounds) == 4 * 3 * (settle + 1)
    assert [len(r["times"]) for r in out.values()] == [4, 4, 4]
    for i in timed:  # Each timed call comes right after `settle` untimed calls of the same variant.
        assert calls[i - settle:i + 1] == [calls[i]] * (settle + 1)
    firsts = [rounds[r * 3 * (settle + 1)] for r in range(4)]
    assert firsts == ["a", "b", "c", "a"]  # Rotating which goes first.


def test_fresh_memory_probe_times_the_touch_not_the_pause():
    import resource

    from eval import machine

    nbytes = 4 * 2**20
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = machine.fresh_memory_seconds(nbytes, huge_pages=False, pause_s=0.3)
    assert 0 < seconds < 0.3  # Touching 4 MiB takes milliseconds; the pause before it is not timed.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults >= 2  # Both blocks were touched.
    rates = machine.fresh_memory_rates(nbytes, pause_s=0.0)
    assert set(rates) == {(p, w) for p in ("huge", "4 KB") for w in ("at once", "after a pause")}
    assert all(r > 0 for r in rates.values())


def test_temp_bytes_reads_xla_memory_analysis_and_says_why_not_without_it():
    import jax
    import jax.numpy as jnp

    from eval.bench_difficulty import temp_bytes

    x = jnp.ones((256, 256), jnp.float32)
    fn = jax.jit(lambda a, b: (jnp.sin(a @ b) @ b).sum())
    got = temp_bytes(fn, x, x)
    if jax.default_backend() == "cpu":
        assert isinstance(got, int)  # XLA:CPU reports its buffer sizes.
    assert isinstance(got, str) or got >= 256 * 256 * 4  # The [256, 256] intermediate lives in the temporary buffer.
    why = temp_bytes(lambda a, b: a, x, x)  # Not a jitted function: no analysis, no crash, and the reason.
    assert why.startswith("n/a (AttributeError: ") and "lower" in why
