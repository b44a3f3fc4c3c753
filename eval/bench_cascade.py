"""Wall-clock speed-up of the real cascade (minilm-l3 -> minilm-l6) against its layer-count speed-up, on CPU.

What is timed, on the rotten_tomatoes dev sentences (real text, tokenised with minilm's tokenizer, padded to the
longest):

* ``large``: minilm-l6 alone on every example (the reference the speed-ups divide), ``cascade.run`` with one stage;
* ``cascade``: ``cascade.run`` of minilm-l3 -> minilm-l6: the 6-layer model runs only on the examples the 3-layer
  model was not confident about;
* ``every model``: the authors' way, every model on every example (``cascade.simulate``), for contrast.

All use the same batch size, bucket rule and length trimming. The heads are untrained (``from_pretrained``
seeds the pooler-less minilm-l3's pooler and both classifiers), which does not matter for timing, but the threshold
must make the cascade do a realistic amount of work: it is chosen from one ``cascade.simulate_all`` pass so that the
layer speed-up is about ``--target`` (1.5x by default: 6 / (3 + 6 s) = 1.5 means a share s = 1/6 of the examples
goes on to minilm-l6). Every shape is compiled before timing (``cascade.warmup``) and every variant is called once
untimed; then the variants are interleaved ``--repeats`` times (alternating the order) and each one's best (minimum)
time is used, as the machine is shared; medians are printed too. Timing fails if anything compiles meanwhile.

Also ``large, pad`` and ``cascade, pad``: the same two with ``tail="pad"`` (each stage's last, partial batch padded
to one bucket instead of cut into bucket-sized pieces; the default is ``tail="split"``), with their ratio taken
against ``large, pad``. Diagnostics, timed the same way: ``small on all`` (minilm-l3 alone on every example) and
``large on hard`` (minilm-l6 alone on the examples the cascade sends on), whose sum is what the cascade would cost
with no overhead of its own. A second table gives each part's time as a share of minilm-l6 on all, next to the share
that layers x examples predict.

Run from the repository root::

    python -m eval.bench_cascade                         # batch 64 and 256, all 1200 dev sentences:
                                 # ~850 CPU-seconds: ~15 min on the shared 2-core machine at load 1-4
    python -m eval.bench_cascade --batch-sizes 64 --repeats 3 --examples 600   # a quick look
    python -m eval.bench_cascade --smoke     # under a minute: 32 sentences, batch 8, max length 32; no numbers

The last line is ``wall-clock/layer speed-up, worst case: R``: the smallest (wall-clock speed-up / layer speed-up)
over the batch sizes; 1.0 means the cascade saves exactly as much time as it saves layers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # `python eval/bench_cascade.py`: make `cascade_jax` importable from the repo root.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from eval import machine  # noqa: E402

# --smoke: every variant, on a few sentences in small batches (max length 32: two length buckets of 16).
SMOKE_DEFAULTS = dict(batch_sizes=[8], repeats=1, examples=32, max_length=32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench_cascade",
        description="Wall-clock vs layer-count speed-up of the minilm-l3 -> minilm-l6 cascade run for real "
        "(cascade.run) on rotten_tomatoes dev sentences, against minilm-l6 alone and against running every model "
        "on every example. Prints a table and, last, 'wall-clock/layer speed-up, worst case: R'.",
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256], help="batch sizes (default: 64 256)")
    p.add_argument("--target", type=float, default=1.5, help="layer speed-up the threshold aims at (default 1.5)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each variant, interleaved (default 3)")
    p.add_argument("--examples", type=int, default=None, help="use only the first N dev sentences (default: all)")
    p.add_argument("--length-multiple", type=int, default=16,
                   help="trim each batch to its longest row rounded up to this multiple, after sorting each stage's "
                   "queue by length (cascade.run's length_multiple; 0 = no trimming, every batch at the padded "
                   "length). Default 16")
    p.add_argument("--buckets", default="default", choices=["default", "full"],
                   help="batch sizes allowed for a stage's last, partial batch: 'default' (batch size halved down "
                   "to 8) or 'full' (always a full batch)")
    p.add_argument("--max-length", type=int, default=128, help="tokeniser truncation (default 128)")
    return machine.parse_args_with_smoke(p, argv, SMOKE_DEFAULTS)


def choose_threshold(stage1_max_prob, layers, target: float) -> float:
    """A threshold between two neighbouring stage-1 confidences such that the layer speed-up of a two-stage cascade
    (exit when max prob > threshold) is as close to ``target`` as the data allow."""
    import numpy as np

    small, large = layers
    v = np.sort(np.asarray(stage1_max_prob, np.float64))
    n = len(v)
    # k examples (the least confident) go on: mean layers = small + large * k / n.
    k = int(round(n * (large / target - small) / large))
    k = min(max(k, 1), n - 1)
    return float((v[k - 1] + v[k]) / 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    from cascade_jax import provenance

    if args.smoke:
        print(machine.SMOKE_NOTE)
    print(f"provenance: {json.dumps(provenance.provenance())}", flush=True)

    import jax
    import numpy as np

    from cascade_jax import cascade, comparison, data, models

    jax.config.update("jax_platforms", "cpu")
    started = time.perf_counter()
    print(f"CPU: {machine.describe()}; jax {jax.__version__}")
    print(f"load average at start: {machine.load_average()}", flush=True)

    tokenizer = models.tokenizer_for("minilm-l6")
    enc = data.encode_split("rotten_tomatoes", "validation", tokenizer=tokenizer, max_length=args.max_length)
    inputs = comparison.padded_inputs(enc)
    if args.examples:
        inputs = {k: v[: args.examples] for k, v in inputs.items()}
        longest = int(inputs["attention_mask"].sum(1).max())
        inputs = {k: v[:, :longest] for k, v in inputs.items()}
    n, seq_len = inputs["input_ids"].shape
    lengths = inputs["attention_mask"].sum(1)
    stages = []
    for name in ("minilm-l3", "minilm-l6"):
        module, params = models.from_pretrained(name, num_labels=2, seed=0)
        stages.append(cascade.Stage(models.logits_fn(module), params, module.config.num_hidden_layers,
                                    config=module.config, name=name))
    large = stages[-1]
    length_multiple = args.length_multiple or None
    print(f"data: rotten_tomatoes dev, {n} sentences, padded length {seq_len}, real length mean "
          f"{lengths.mean():.1f} / median {np.median(lengths):.0f}; length_multiple={length_multiple}, "
          f"buckets={args.buckets}", flush=True)

    rows, parts = [], []
    for batch_size in args.batch_sizes:
        buckets = (batch_size,) if args.buckets == "full" else cascade.default_buckets(batch_size)
        kw = dict(buckets=buckets, length_multiple=length_multiple)
        t0 = time.perf_counter()
        compiled = cascade.warmup(stages, batch_size, seq_len, **kw)
        compile_s = time.perf_counter() - t0
        sim = cascade.simulate_all(stages, inputs, batch_size, **kw)
        threshold = choose_threshold(sim.max_prob[0], [s.num_layers for s in stages], args.target)
        survivors = np.flatnonzero(sim.result(threshold).exit_stage == len(stages) - 1)
        hard = {k: v[survivors] for k, v in inputs.items()}
        pad = dict(kw, tail="pad")
        variants = {
            "large": lambda: cascade.run([large], inputs, (), batch_size, **kw),
            "cascade": lambda: cascade.run(stages, inputs, threshold, batch_size, **kw),
            "every model": lambda: cascade.simulate(stages, inputs, threshold, batch_size, **kw),
            # The same two with each stage's tail padded to one bucket (cascade.run's tail="pad", its behaviour
            # before tail="split" became the default).
            "large, pad": lambda: cascade.run([large], inputs, (), batch_size, **pad),
            "cascade, pad": lambda: cascade.run(stages, inputs, threshold, batch_size, **pad),
            # Diagnostics: the cascade's two parts, each run on its own.
            "small on all": lambda: cascade.run(stages[:1], inputs, (), batch_size, **kw),
            "large on hard": lambda: cascade.run([large], hard, (), batch_size, **kw),
        }
        results = {name: fn() for name, fn in variants.items()}  # Untimed: first real call of every path.
        before = cascade.compile_count()
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        for r in range(args.repeats):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                c0, w0 = time.process_time(), time.perf_counter()
                results[name] = variants[name]()
                times[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        if cascade.compile_count() != before:
            raise SystemExit("something compiled during timing; the warm-up missed a shape")
        real = results["cascade"]
        if not np.array_equal(real.exit_stage, sim.result(threshold).exit_stage):
            print("note: some exit decisions differ between run and simulate_all (float rounding across shapes)")
        best = {name: min(t) for name, t in times.items()}
        best_cpu = {name: min(t) for name, t in cpu.items()}
        all_layers = sum(s.num_layers for s in stages)
        for name in ("large", "cascade", "every model", "large, pad", "cascade, pad"):
            counted = large.num_layers / results[name].mean_layers if not name.startswith("large") else 1.0
            executed = large.num_layers / all_layers if name == "every model" else counted
            ref = "large, pad" if name.endswith(", pad") else "large"
            wall = best[ref] / best[name]
            by_cpu = best_cpu[ref] / best_cpu[name]
            rows.append(dict(batch=batch_size, variant=name, best=best[name], median=statistics.median(times[name]),
                             ex_s=n / best[name], layer=counted, executed=executed, wall=wall, ratio=wall / counted,
                             cpu=best_cpu[name], cpu_ratio=by_cpu / counted, util=sum(cpu[name]) / sum(times[name])))
        k = len(survivors)
        pieces_split = [real for real, _ in cascade.batch_pieces(k, batch_size, buckets=buckets)]
        pieces_pad = [padded for _, padded in cascade.batch_pieces(k, batch_size, buckets=buckets, tail="pad")]
        small_share = stages[0].num_layers / large.num_layers
        pieces = [("small on all", ["small on all"], small_share), (f"large on {k} hard", ["large on hard"], k / n),
                  ("sum of parts", ["small on all", "large on hard"], small_share + k / n),
                  ("cascade", ["cascade"], small_share + k / n)]
        for part, keys, expected in pieces:
            wall_s, cpu_s = sum(best[x] for x in keys), sum(best_cpu[x] for x in keys)
            parts.append(dict(batch=batch_size, part=part, best=wall_s, cpu=cpu_s, expected=expected,
                              wall_share=wall_s / best["large"], cpu_share=cpu_s / best_cpu["large"]))
        print(f"batch {batch_size}: threshold {threshold:.6f}; {compiled} new shapes compiled in {compile_s:.0f}s; "
              f"minilm-l6 gets {int(real.evaluated[-1])}/{n} examples (mean real length {lengths[survivors].mean():.1f} "
              f"vs {lengths.mean():.1f} for all), in calls of {'+'.join(map(str, pieces_split))} rows (split; "
              f"pad: {'+'.join(map(str, pieces_pad))})", flush=True)

    print(f"\nload average at end: {machine.load_average()}; benchmark took {time.perf_counter() - started:.0f}s wall, "
          f"{time.process_time():.0f}s CPU")
    print("\nbest: fastest of the timed runs (seconds, all sentences); median: of the timed runs; layer: the paper's "
          "layer speed-up, 6 / mean layers of the stages each example needs; executed: 6 / layers actually run per "
          "example (every model runs 3 + 6 on all); wall: best(large) / best(variant); ratio: wall / layer; "
          "cpu s: least process CPU seconds of a run (all threads); cpu ratio: the same ratio from CPU seconds, "
          "less disturbed by other processes; cpu/wall: CPU seconds per wall second (2 = both cores busy for us)\n")
    header = (f"{'batch':>5}  {'variant':<13} {'best s':>7} {'median s':>8} {'ex/s':>7} {'layer':>6} {'executed':>8} "
              f"{'wall':>6} {'ratio':>6} {'cpu s':>7} {'cpu ratio':>9} {'cpu/wall':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['batch']:>5}  {r['variant']:<13} {r['best']:>7.3f} {r['median']:>8.3f} {r['ex_s']:>7.1f} "
              f"{r['layer']:>5.2f}x {r['executed']:>7.2f}x {r['wall']:>5.2f}x {r['ratio']:>6.2f} {r['cpu']:>7.2f} "
              f"{r['cpu_ratio']:>9.2f} {r['util']:>8.2f}")
    print("\nWhere the cascade's time goes: each part's best wall and CPU time as a share of minilm-l6 alone on all, "
          "against the share its layers x examples predict\n")
    header = (f"{'batch':>5}  {'part':<22} {'best s':>7} {'cpu s':>7} {'wall share':>10} {'cpu share':>9} "
              f"{'predicted':>9}")
    print(header)
    print("-" * len(header))
    for p in parts:
        print(f"{p['batch']:>5}  {p['part']:<22} {p['best']:>7.3f} {p['cpu']:>7.2f} {p['wall_share']:>10.2f} "
              f"{p['cpu_share']:>9.2f} {p['expected']:>9.2f}")
    for batch_size in args.batch_sizes:
        by = {r["variant"]: r for r in rows if r["batch"] == batch_size}
        print(f"batch {batch_size}: split/pad time, minilm-l6 alone {by['large']['best'] / by['large, pad']['best']:.2f}, "
              f"cascade {by['cascade']['best'] / by['cascade, pad']['best']:.2f} (CPU: "
              f"{by['large']['cpu'] / by['large, pad']['cpu']:.2f}, {by['cascade']['cpu'] / by['cascade, pad']['cpu']:.2f})")
    worst = min(r["ratio"] for r in rows if r["variant"] == "cascade")
    print(f"wall-clock/layer speed-up, worst case: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
