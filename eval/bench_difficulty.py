"""Difficulty labelling: K x S members trained as one vmapped run vs a Python loop over the same members.

Both modes run :func:`cascade_jax.difficulty.label_difficulty` end to end, each in a fresh state of this process
(train every member, predict its held-out fold, aggregate, write the labels), with identical settings; they
differ only in ``sequential``:

* ``vmapped``: all members' states stacked, one ``jax.vmap``-ed step per lock-step (one compiled program per
  batch length for all members);
* ``loop``: the same per-member step, un-vmapped, run for one member after another (``--sequential``); its
  program is compiled once and reused by every member.

1. End to end (after a warm-up that pays the process's one-off costs, see :func:`warm_up`). Reported per mode: end-
to-end wall time of the call (also data and model loading, optimiser init, prediction, writing files), the run's own
train and predict times, the steady step time (median time between consecutive steps of a group, per member-step;
"train s at steady rate" is that times the member-steps, so train minus it is about compilation and group set-up),
and process CPU time. Every step is timed after its metrics reached the host, so the steps are synchronised (as the
progress bar does anyway). The machine is shared: ``/proc/loadavg`` is printed before, between and after, and
``cpu/wall`` well below the core count means other work took cores away. A second table breaks each run's time into
compilation (JAX tracing, lowering and XLA compilation, from ``jax.monitoring``'s compile time spans; inside
training, inside prediction, elsewhere), training steps (the time in ``stacked.train_group`` less the compilation in
it), prediction (the time in ``stacked.predict_group`` less the compilation in it) and the rest (data and model
loading, optimiser init, aggregating and writing labels; compilation outside the two phases is part of it). A third
table puts every lock-step of the two runs side by side (the loop's summed over its members), with the members'
batch widths at that step and the compilation inside it, so that one-off costs (compiling a width, a program's
first call, a group's set-up) show apart from the steady steps.

Both runs use a labelling run's default length grouping (``--length-grouping``; 0 turns it off): a stacked
lock-step is padded to the longest of its members' batches, so with plain random batches the vmapped run computes
more padding than the loop (the count of token positions each way is printed); grouped batches of one length bucket
at the same step make the two nearly equal.

2. Training step alone, interleaved. Since the two runs above happen at different moments of a shared machine,
the same compiled steps (cached by the runs) are then timed back to back: one vmapped step of all members, then
one step of each member in a loop, repeated ``--repeats`` times on the real batches of one lock-step (the first
at which all members' batches have the same width, printed; so both compute the same token positions); wall and
process CPU time, median over repeats.

3. Memory. The temporary buffer XLA gives one call of each step program (its compiled memory analysis: the vmapped
program asks for every member's at once), and a fresh-memory probe (``--memory-probe-mib``): seconds per GiB to touch
newly mapped memory right after an equal block was unmapped and after ``--memory-probe-pause`` seconds, with
transparent huge pages (as malloc uses them under ``./run``) and with 4 KB pages. On a VM that hands freed memory
back to its host, the pause makes huge pages many times dearer; that, times the vmapped buffer, is what the
vmapped run pays after each compilation or change of batch width (docs/bench_difficulty.md, session 17). The first
table's kernel seconds and page faults (``getrusage``) show the same from the runs themselves.

Run from the repository root (defaults: minilm-l3, 256 rotten_tomatoes examples, K=4, S=2, 1 epoch, batch 16,
max_length 64; a few minutes on 2 cores)::

    python -m eval.bench_difficulty
    python -m eval.bench_difficulty --subset 128 --folds 2 --seeds 2     # a quicker look
    python -m eval.bench_difficulty --smoke    # under a minute: 32 examples, K=2 x S=1, length 16; no numbers

The very last line is ``vmapped/loop time: R``: end-to-end time of the vmapped run over the loop run (what a
``label_difficulty`` process costs each way; R < 1 means the vmapped run is faster).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python eval/bench_difficulty.py`: make `cascade_jax` importable.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from eval import machine  # noqa: E402

# --smoke: the same two runs and the step-only comparison, as small as they go (2 lock-steps per member).
SMOKE_DEFAULTS = dict(model="minilm-l3", subset=32, folds=2, seeds=1, epochs=1.0, batch_size=8, max_length=16,
                      repeats=1, memory_probe_mib=64, memory_probe_pause=0.1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.bench_difficulty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l3")
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--source", default=None)
    p.add_argument("--subset", type=int, default=256, help="training examples labelled (data.subset)")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--length-grouping", type=int, default=None,
                   help="data.length_grouping of both runs (default: a labelling run's own, "
                        "difficulty.LABEL_LENGTH_GROUPING; 0: plain random batches)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the step-only comparison")
    p.add_argument("--first", choices=("vmapped", "loop"), default="vmapped",
                   help="which end-to-end run goes first (the other follows in the same process)")
    p.add_argument("--output-dir", default=None, help="keep the runs here (default: a temporary directory)")
    p.add_argument("--memory-probe-mib", type=int, default=1024,
                   help="size of the fresh-memory probe (MiB; 0 skips it): the time to touch memory the process has "
                        "not used yet, at once and after a pause, with huge pages and with 4 KB pages")
    p.add_argument("--memory-probe-pause", type=float, default=5.0,
                   help="seconds the probe's memory stays free before it is touched again (default: 5, about two "
                        "vmapped lock-steps)")
    args = machine.parse_args_with_smoke(p, argv, SMOKE_DEFAULTS)
    if args.smoke and args.output_dir and machine.inside_docs(args.output_dir):
        p.error("--smoke writes nothing into docs/: give --output-dir another path (or none: a temporary one)")
    return args


def warm_up(base: dict, root: pathlib.Path) -> None:
    """Pay the process's one-off costs before timing, so that the first mode timed does not carry them alone:
    tokenizer and data cache, model loading, the small kernels of eager optimiser init, orbax start-up. Compiles
    no training or prediction step (those differ between the modes and are part of what is measured)."""
    from cascade_jax import checkpoints, configs, difficulty

    plan = difficulty.make_plan(configs.create(difficulty.LabelConfig, {**base, "output_dir": str(root / "warm-up")}))
    state = plan.init_state(plan.members[0])
    ckpt = checkpoints.Checkpoints(root / "warm-up")
    ckpt.save_state(0, state, {"step": 0})
    ckpt.wait()
    ckpt.restore_state(state)
    ckpt.close()


COMPILE_EVENTS = "/jax/core/compile/"  # jax.monitoring time spans: tracing, lowering to MLIR, XLA compilation.


def merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` with overlapping ones merged (nested compilations count once), sorted."""
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def overlap(spans: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    """Seconds of ``spans`` (merged) that fall inside ``windows`` (disjoint)."""
    return sum(max(0.0, min(b, wb) - max(a, wa)) for a, b in spans for wa, wb in windows)


class Phases:
    """While active: the wall-clock windows of ``stacked.train_group`` and ``stacked.predict_group`` calls (which
    ``difficulty.label_difficulty`` makes through the module, so wrapping the module's functions sees them) and the
    time spans of every JAX compilation (``jax.monitoring``), all in ``time.time()`` seconds."""

    def __init__(self):
        self.windows: dict[str, list[tuple[float, float]]] = {"train": [], "predict": []}
        self.compiles: list[tuple[float, float]] = []

    def _on_span(self, event, start, end, **_):
        if event.startswith(COMPILE_EVENTS):
            self.compiles.append((start, end))

    def __enter__(self):
        import jax

        from cascade_jax import stacked

        self._saved = {"train": stacked.train_group, "predict": stacked.predict_group}

        def wrap(kind, fn):
            def timed_fn(*a, **k):
                t0 = time.time()
                try:
                    return fn(*a, **k)
                finally:
                    self.windows[kind].append((t0, time.time()))
            return timed_fn

        stacked.train_group = wrap("train", stacked.train_group)
        stacked.predict_group = wrap("predict", stacked.predict_group)
        jax.monitoring.register_event_time_span_listener(self._on_span)
        return self

    def __exit__(self, *exc):
        import jax

        from cascade_jax import stacked

        stacked.train_group, stacked.predict_group = self._saved["train"], self._saved["predict"]
        jax.monitoring.unregister_event_time_span_listener(self._on_span)

    def breakdown(self, end_to_end: float) -> dict:
        """Seconds: compile (train, predict, other, total), train steps, predict, rest."""
        if not self.windows["train"] or not self.windows["predict"]:
            raise SystemExit("bench_difficulty: saw no stacked.train_group / predict_group call; has "
                             "difficulty.label_difficulty stopped calling them through the stacked module?")
        spans = merged(self.compiles)
        compile_train = overlap(spans, self.windows["train"])
        compile_predict = overlap(spans, self.windows["predict"])
        compile_all = sum(b - a for a, b in spans)
        train = sum(b - a for a, b in self.windows["train"])
        predict = sum(b - a for a, b in self.windows["predict"])
        return {"compile": compile_all, "compile_train": compile_train, "compile_predict": compile_predict,
                "compile_other": compile_all - compile_train - compile_predict, "train_steps": train - compile_train,
                "prediction": predict - compile_predict, "rest": end_to_end - train - predict}

    def lock_steps(self, stamps: list[tuple[int, int, int, float]]) -> dict[int, tuple[float, float]]:
        """Per lock-step (1-based): (seconds, of which compilation), summed over the run's groups. A step's time
        runs from the group's previous step (its first: from the start of its ``train_group`` call, so it includes
        the group's set-up) to the arrival of its metrics."""
        spans = merged(self.compiles)
        out: dict[int, tuple[float, float]] = {}
        for g, (start, _) in enumerate(self.windows["train"]):
            prev = start
            for _, step, _, t in sorted(x for x in stamps if x[0] == g):
                seconds, compiled = out.get(step, (0.0, 0.0))
                out[step] = (seconds + t - prev, compiled + overlap(spans, [(prev, t)]))
                prev = t
        return out


def batch_shapes(plan) -> list[list[tuple[int, int]]]:
    """Per lock-step (0-based), the ``(rows, padded length)`` of each member's own batch (un-stacked, as the loop
    runs it)."""
    from cascade_jax import stacked

    return [[stacked.group_train_batch(plan, [m], step, False)["input_ids"].shape for m in plan.members]
            for step in range(plan.total_steps)]


def same_width_step(shapes: list[list[tuple[int, int]]]) -> int:
    """The first lock-step (0-based) at which every member's own batch has the same width, so that the stacked
    step computes no more token positions than the loop's (0 if there is none)."""
    same = [i for i, widths in enumerate(shapes) if len({w for _, w in widths}) == 1]
    return same[0] if same else 0


def padded_tokens(plan, shapes: list[list[tuple[int, int]]] | None = None) -> dict[str, int]:
    """Token positions (rows x padded length) the training steps of ``plan``'s members compute, summed over the
    run: ``vmapped`` pads each lock-step's stacked batch to the longest of the members' batches, ``loop`` pads each
    member's batch to its own length bucket (both also count the empty batches a member steps through at the end of
    a short epoch). The difference is padding only: both see the same examples at the same steps. ``shapes``:
    :func:`batch_shapes` of ``plan``, if already made."""
    out = {"vmapped": 0, "loop": 0}
    for widths in batch_shapes(plan) if shapes is None else shapes:
        rows = widths[0][0]
        out["vmapped"] += len(widths) * rows * max(w for _, w in widths)
        out["loop"] += sum(r * w for r, w in widths)
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def widths_label(widths: list[tuple[int, int]]) -> str:
    """The distinct padded lengths of one lock-step's member batches (a row of :func:`batch_shapes`): "32/64"."""
    return "/".join(map(str, sorted({w for _, w in widths})))


def print_lock_steps(shapes: list[list[tuple[int, int]]], by: dict[str, dict]) -> None:
    """Each lock-step of both runs side by side, with the members' batch widths at that step (``shapes``:
    :func:`batch_shapes`)."""
    vm, lp = by["vmapped"]["lock_steps"], by["loop"]["lock_steps"]
    print("\nper lock-step (s; first step of a group includes its set-up; 'compile' = compilation inside the step; "
          "the loop's time is the sum over its members):\n")
    print("| step | member widths | vmapped | compile | loop | compile | vmapped/loop, compilation left out |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    totals = {"vmapped": [0.0, 0.0], "loop": [0.0, 0.0]}
    for step in sorted(vm):
        (v, vc), (lt, lc) = vm[step], lp.get(step, (float("nan"), 0.0))
        totals["vmapped"][0] += v
        totals["vmapped"][1] += vc
        totals["loop"][0] += lt
        totals["loop"][1] += lc
        print(f"| {step} | {widths_label(shapes[step - 1])} | {v:.2f} | {vc:.2f} | {lt:.2f} | {lc:.2f} | "
              f"{_ratio(v - vc, lt - lc):.2f} |")
    (v, vc), (lt, lc) = totals["vmapped"], totals["loop"]
    print(f"| all | | {v:.1f} | {vc:.1f} | {lt:.1f} | {lc:.1f} | {_ratio(v - vc, lt - lc):.2f} |")
    print(f"lock-steps without their compilation, vmapped/loop: {_ratio(v - vc, lt - lc):.3f}; compilation in the "
          f"steps: vmapped {vc:.1f} s, loop {lc:.1f} s")


def temp_bytes(step, state, batch) -> int | str:
    """The temporary buffer XLA gives one call of ``step`` (bytes; its compiled memory analysis), or why there is
    no figure (a short text for the table). Compiles ``step`` once more (ahead of time; the jit cache has no public
    handle)."""
    try:
        stats = step.lower(state, batch).compile().memory_analysis()
    except Exception as e:  # noqa: BLE001 -- whatever the backend or the function lacks, the table says it.
        return f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else 'no message'})"
    if stats is None:
        import jax
        return f"n/a (the {jax.default_backend()} backend gives no memory analysis)"
    return int(stats.temp_size_in_bytes)


def print_memory(temp: dict[str, int | str], members: int, probe_mib: int, pause: float) -> None:
    """The step programs' per-call temporary buffers and the machine's fresh-memory rates (see the page)."""
    def gb(x):
        return x if isinstance(x, str) else f"{x / 1e9:.2f} GB"

    print(f"\nper-call temporary buffer of the step programs (XLA's memory analysis; at the step-only widths): "
          f"vmapped {gb(temp['vmapped'])} per call of {members} members, loop {gb(temp['loop'])} per call of "
          f"one member")
    if probe_mib <= 0:
        return
    rates = machine.fresh_memory_rates(probe_mib * 2**20, pause)
    print(f"\nfresh memory: seconds per GiB to touch {probe_mib} MiB of newly mapped memory, at once after an equal "
          f"block was unmapped, and after a pause of {pause:g} s (on a VM whose host takes freed memory back, the "
          f"pause costs):\n")
    print("| pages | at once | after a pause |")
    print("|---|---:|---:|")
    for pages in ("huge", "4 KB"):
        print(f"| {pages} | {rates[(pages, 'at once')]:.2f} | {rates[(pages, 'after a pause')]:.2f} |")
    if isinstance(temp["vmapped"], int):
        worst = max(rates.values())
        print(f"\nif its temporary buffer comes back as fresh memory, one vmapped call pays up to "
              f"{temp['vmapped'] / 2**30 * worst:.2f} s for it at the slowest rate above "
              f"({temp['vmapped'] / 2**30 * rates[('huge', 'at once')]:.2f} s at the fastest huge-page rate)")


def main(argv=None) -> int:
    args = parse_args(argv)
    from cascade_jax import provenance

    if args.smoke:
        print(machine.SMOKE_NOTE)
    print(f"provenance: {json.dumps(provenance.provenance())}", flush=True)

    import jax

    from cascade_jax import configs, difficulty

    info = machine.info()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, {info['platform']}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform} x{jax.device_count()}")
    print(f"load average (1, 5, 15 min) before: {info['load']}")
    root = pathlib.Path(args.output_dir or tempfile.mkdtemp(prefix="bench_difficulty_"))
    base = {"model.name": args.model, "task": args.task, "source": args.source, "train_subset": args.subset,
            "folds": args.folds, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size,
            "max_length": args.max_length, "learning_rate": args.lr, "progress": False, "log_every": 1000}
    if args.length_grouping is not None:
        base["length_grouping"] = args.length_grouping
    rows, labels = [], {}
    try:
        t = time.perf_counter()
        warm_up(base, root)
        print(f"  warm-up (one-off process costs, not timed below): {time.perf_counter() - t:.1f} s", flush=True)
        for mode in (("vmapped", "loop") if args.first == "vmapped" else ("loop", "vmapped")):
            out = root / mode
            shutil.rmtree(out, ignore_errors=True)
            cfg = configs.create(difficulty.LabelConfig, {**base, "output_dir": str(out), "sequential": mode == "loop"})
            stamps: list[tuple[int, int, int, float]] = []  # (group, step, members, time.time() metrics arrived)

            def on_step(group, step, per_member, stamps=stamps):
                stamps.append((group, step, len(per_member["loss"]), time.time()))

            load_before = machine.load_average()
            with Phases() as phases:
                t0, cpu0, usage0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
                result = difficulty.label_difficulty(cfg, on_step=on_step)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                usage = resource.getrusage(resource.RUSAGE_SELF)
            s = result.summary
            steady = []  # Time between consecutive steps of a group, per member-step.
            for g in sorted({g for g, _, _, _ in stamps}):
                times = [t for gg, _, _, t in stamps if gg == g]
                size = next(n for gg, _, n, _ in stamps if gg == g)
                steady += [(b - a) / size for a, b in zip(times, times[1:])]
            rows.append({"mode": mode, "end_to_end": wall, "train": s["train_seconds"],
                         "predict": s["predict_seconds"], "member_steps": s["members"] * s["total_steps"],
                         "steady": statistics.median(steady), "cpu": cpu, "cpu_per_wall": cpu / wall,
                         "sys": usage.ru_stime - usage0.ru_stime, "faults": usage.ru_minflt - usage0.ru_minflt,
                         "accuracy": s["mean_heldout_accuracy"], "share_hard": s["share_hard"],
                         "load": f"{load_before} -> {machine.load_average()}", **phases.breakdown(wall),
                         "lock_steps": phases.lock_steps(stamps)})
            labels[mode] = [json.loads(line) for line in result.labels_path.read_text().splitlines()]
            print(f"  {mode:7s}: {wall:7.1f} s end to end (load {rows[-1]['load']})", flush=True)
    finally:
        if args.output_dir is None:
            shutil.rmtree(root, ignore_errors=True)

    r0 = rows[0]
    print(f"\n{args.model} members: K={args.folds} x S={args.seeds} = {args.folds * args.seeds}, "
          f"{args.subset} examples, "
          f"{args.epochs:g} epoch(s), batch {args.batch_size} per member, max_length {args.max_length}, "
          f"length grouping {base.get('length_grouping', difficulty.LABEL_LENGTH_GROUPING) or 'off'}; "
          f"{r0['member_steps']} member-steps per run\n")
    print("| mode | end to end s | train s | predict s | steady s per member-step | train s at steady rate | "
          "CPU s | of it kernel s | minor page faults | cpu/wall | load (1 min) before -> after | held-out acc | "
          "share hard |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['end_to_end']:.1f} | {r['train']:.1f} | {r['predict']:.1f} | {r['steady']:.3f} | "
              f"{r['steady'] * r['member_steps']:.1f} | {r['cpu']:.1f} | {r['sys']:.1f} | {r['faults']:,} | "
              f"{r['cpu_per_wall']:.2f} | {r['load']} | "
              f"{r['accuracy']:.3f} | {r['share_hard']:.3f} |")
    print("\nWhere each run's time goes (s): compile = JAX tracing + lowering + XLA compilation (jax.monitoring), "
          "split by where it happened; training steps = time in stacked.train_group less its compilation (the steps, "
          "with the loop's set-up and checkpoints); prediction = time in stacked.predict_group less its compilation; "
          "rest = the run's other work (loading, init, aggregating, writing; compilation elsewhere included)\n")
    print("| mode | end to end | compile | in training | in prediction | elsewhere | training steps | prediction | "
          "rest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['end_to_end']:.1f} | {r['compile']:.1f} | {r['compile_train']:.1f} | "
              f"{r['compile_predict']:.1f} | {r['compile_other']:.1f} | {r['train_steps']:.1f} | "
              f"{r['prediction']:.1f} | {r['rest']:.1f} |")
    vm, lp = labels["vmapped"], labels["loop"]
    same = sum(a["difficulty"] == b["difficulty"] and a["seeds_wrong"] == b["seeds_wrong"] for a, b in zip(vm, lp))
    gap = max(abs(a["confidence"] - b["confidence"]) for a, b in zip(vm, lp))
    print(f"\nlabels (difficulty, seeds_wrong) equal between vmapped and loop: {same} of {len(vm)}; "
          f"max |confidence difference|: {gap:.2e}")
    by = {r["mode"]: r for r in rows}
    print(f"end to end: steady per-member-step ratio vmapped/loop: "
          f"{by['vmapped']['steady'] / by['loop']['steady']:.3f}")
    print(f"end to end: CPU-time ratio vmapped/loop: {by['vmapped']['cpu'] / by['loop']['cpu']:.3f}")

    # 2. The training step alone, vmapped and looped back to back (compiled programs reused from the runs).
    from cascade_jax import parallel, stacked

    plan = difficulty.make_plan(configs.create(difficulty.LabelConfig, {**base, "output_dir": str(root / "steps")}))
    shapes = batch_shapes(plan)
    tokens = padded_tokens(plan, shapes)
    print(f"token positions a training run computes (padding included; length grouping "
          f"{plan.data.length_grouping or 'off'}): vmapped {tokens['vmapped']:,}, loop {tokens['loop']:,}, "
          f"ratio {tokens['vmapped'] / tokens['loop']:.3f}")
    print_lock_steps(shapes, by)
    dp = parallel.DataParallel()
    members = plan.members
    step_v, _ = plan.functions(dp, True)
    step_l, _ = plan.functions(dp, False)
    state_v = dp.replicate(plan.init_stacked_state(members), donated=True)
    state_l = [dp.replicate(plan.init_state(m), donated=True) for m in members]
    timing = {"vmapped": [], "loop": []}
    step = same_width_step(shapes)
    batch_v = dp.shard_batch(stacked.group_train_batch(plan, members, step, True), 1)
    batch_l = [dp.shard_batch(stacked.group_train_batch(plan, [m], step, False)) for m in members]
    for rep in range(args.repeats + 1):  # Repeat 0 warms up (first calls allocate), not timed.
        t, c = time.perf_counter(), time.process_time()
        state_v, _ = step_v(state_v, batch_v)
        jax.block_until_ready(state_v)
        if rep:
            timing["vmapped"].append((time.perf_counter() - t, time.process_time() - c))
        t, c = time.perf_counter(), time.process_time()
        for i in range(len(members)):
            state_l[i], _ = step_l(state_l[i], batch_l[i])
        jax.block_until_ready(state_l)
        if rep:
            timing["loop"].append((time.perf_counter() - t, time.process_time() - c))
    print(f"\ntraining step alone, interleaved, {len(members)} members x 1 step (lock-step {step + 1}'s batches, member "
          f"widths {widths_label(shapes[step])}), median of {args.repeats} (load {machine.load_average()}):\n")
    print("| mode | wall s | CPU s | cpu/wall |")
    print("|---|---:|---:|---:|")
    med = {}
    for mode, ts in timing.items():
        wall_m, cpu_m = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
        med[mode] = (wall_m, cpu_m)
        print(f"| {mode} | {wall_m:.2f} | {cpu_m:.2f} | {cpu_m / wall_m:.2f} |")
    print(f"\nstep-only ratio vmapped/loop: wall {med['vmapped'][0] / med['loop'][0]:.3f}, "
          f"CPU {med['vmapped'][1] / med['loop'][1]:.3f}")

    # 3. Memory: what each call of the two step programs allocates afresh, and what fresh memory costs here.
    temp = {"vmapped": temp_bytes(step_v, state_v, batch_v), "loop": temp_bytes(step_l, state_l[0], batch_l[0])}
    print_memory(temp, len(members), args.memory_probe_mib, args.memory_probe_pause)
    print(f"load average after: {machine.load_average()}")
    print(f"vmapped/loop time: {by['vmapped']['end_to_end'] / by['loop']['end_to_end']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
