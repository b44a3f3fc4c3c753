"""Forward throughput of our Flax BERT against PyTorch transformers on CPU, with the same weights.

For each model, batch size and sequence length this times ``jax.jit(models.logits_fn(module))`` and
``transformers.BertForSequenceClassification`` (eval mode, ``torch.inference_mode()``, transformers' default
attention implementation) on one identical float32 batch, and prints examples per second for both.

The torch model gets exactly our weights: the JAX parameters (pretrained encoder plus the seeded pooler and
classifier) are written with ``models.save_pretrained`` and read back with ``from_pretrained``; the benchmark
checks that both give the same logits before timing.

Inputs are random token ids (never special tokens) with a full attention mask and token type 0, so there is no
padding: this measures dense compute, not tokenisation or padding handling.

JAX path: ``jax.jit(models.logits_fn(module), compiler_options=JAX_COMPILER_OPTIONS)``, i.e. with XLA:CPU's
YNNPACK library fusions turned off for this function (see ``JAX_COMPILER_OPTIONS`` below and
``docs/bench_model.md``). Unless ``--no-xla-default`` is given, the same function compiled with XLA's default
options is timed too and shown in its own columns, so the effect of that one option is visible.

Timing: compilation (ahead of time) and warm-up calls (oneDNN primitive creation, allocator growth) are
excluded; JAX outputs are waited for with ``block_until_ready``; JAX and torch runs are interleaved per
configuration (rotating which goes first) so that machine noise hits both; each framework's time is the median of its runs. Process CPU time
is recorded as well: ``cpu/wall`` near the core count means all cores were busy for that framework; well below
it means the machine was shared with other work (or the framework left cores idle).

Run from the repository root::

    python -m eval.bench_model                      # the full grid (~5 min on 2 idle cores, longer if shared)
    python -m eval.bench_model --models minilm-l3 --batch-sizes 32 --lengths 64 --repeats 3   # a quick look
    python -m eval.bench_model --smoke    # seconds: minilm-l3, batch 2, length 16, 1 run; checks it runs, no numbers

The very last line is ``jax/torch forward throughput, worst case: R``, R the smallest jax/torch ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python eval/bench_model.py`: make `cascade_jax` importable from the repo root.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from eval import machine  # noqa: E402


# XLA:CPU in jaxlib 0.10 hands dots, and the elementwise ops and reductions around them, to YNNPACK "library
# fusions" by default. For this model on CPU that is slower than XLA's own emitters: it materialises broadcast
# constants at full activation size (e.g. [batch, length, 1536] for the GELU) and needs ~2.3x the scratch memory,
# which is page-faulted afresh on every call. An empty fusion-type list turns those fusions off for the functions
# jitted here only; nothing else in the process changes.
JAX_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# --smoke: the smallest grid (one warm-up call stays: its outputs are the JAX/torch logits check).
SMOKE_DEFAULTS = dict(models=["minilm-l3"], batch_sizes=[2], lengths=[16], repeats=1, min_seconds=0.0, warmup=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench_model",
        description="Forward examples/second of the Flax BERT (jax.jit of models.logits_fn) against PyTorch "
        "transformers BertForSequenceClassification with the same weights, float32, on CPU. Random token ids, "
        "full attention masks. Prints a table and, last, 'jax/torch forward throughput, worst case: R'.",
    )
    p.add_argument("--models", nargs="+", default=["minilm-l3", "minilm-l6"],
                   help="built-in model names or local Hugging Face directories (default: minilm-l3 minilm-l6)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256], help="batch sizes (default: 32 256)")
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 128], help="sequence lengths (default: 64 128)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed forward passes per framework and configuration, at least (default: 3); the median "
                   "is reported")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="for cheap configurations, keep repeating (up to 4x --repeats) until each framework has "
                   "run this long in total, to steady the median (default: 3.0)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per framework before timing, after JAX's ahead-of-time compilation "
                   "(default: 1)")
    p.add_argument("--no-xla-default", dest="xla_default_too", action="store_false",
                   help="do not also time the JAX function compiled with XLA's default options (saves about a "
                   "third of the run time)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores both frameworks may use (default: all). Pins the process to the first N "
                   "cores before JAX and torch start, which sizes XLA's CPU thread pool, and sets "
                   "torch.set_num_threads(N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids and the classifier head")
    args = machine.parse_args_with_smoke(p, argv, SMOKE_DEFAULTS)
    if args.repeats < 1 or args.warmup < 1:
        p.error("--repeats and --warmup must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        # Before jax/torch import: XLA sizes its CPU thread pool from the schedulable cores, OpenMP likewise.
        available = sorted(os.sched_getaffinity(0))
        if not 1 <= args.threads <= len(available):
            raise SystemExit(f"--threads must be between 1 and {len(available)}")
        os.sched_setaffinity(0, available[: args.threads])

    import jax
    import numpy as np
    import torch
    import transformers

    from cascade_jax import models

    jax.config.update("jax_platforms", "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    if args.smoke:
        print(machine.SMOKE_NOTE)
    print(f"CPU: {machine.describe()}")
    print(f"python {platform.python_version()}, jax {jax.__version__} ({jax.devices()[0].platform}), "
          f"flax {__import__('flax').__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"threads: torch.get_num_threads()={torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()}); XLA CPU runs each op on its own intra-op thread pool, "
          f"sized to the schedulable cores ({len(os.sched_getaffinity(0))}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    print(f"inputs: random token ids in [1000, vocab), full attention mask, token type 0; float32; "
          f"warm-up {args.warmup} call(s) excluded; >= {args.repeats} timed runs each, interleaved, median")
    # The benchmark's JAX path: jax.jit of models.logits_fn, compiled with YNNPACK library fusions off (see the
    # module docstring and docs/bench_model.md); unless --no-xla-default, the same function is also compiled with
    # XLA's default options and timed alongside, so the table shows what the option buys.
    variants = {"jax": dict(compiler_options=JAX_COMPILER_OPTIONS)}
    if args.xla_default_too:
        variants["jax-xla-default"] = {}
    print(f"JAX compiler options: {JAX_COMPILER_OPTIONS}" + (" (also timed: XLA defaults)" if args.xla_default_too else ""))
    print(f"load average at start: {machine.load_average()}", flush=True)

    rows = []
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    for name in args.models:
        module, params = models.from_pretrained(name, num_labels=2, seed=args.seed)
        jitted = {v: jax.jit(models.logits_fn(module), **kw) for v, kw in variants.items()}
        with tempfile.TemporaryDirectory() as tmp:
            models.save_pretrained(module, params, tmp)
            torch_model = transformers.BertForSequenceClassification.from_pretrained(tmp).eval()
        attn_impl = getattr(torch_model.config, "_attn_implementation", "?")
        cfg = module.config
        print(f"\n{name}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads; "
              f"torch attention implementation: {attn_impl}", flush=True)

        for batch_size in args.batch_sizes:
            for length in args.lengths:
                ids = rng.integers(1000, cfg.vocab_size, size=(batch_size, length), dtype=np.int64)
                mask = np.ones_like(ids)
                types = np.zeros_like(ids)
                jax_batch = jax.device_put({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                                            "token_type_ids": types.astype(np.int32)})
                torch_batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                               "token_type_ids": torch.from_numpy(types)}

                fns, compile_s = {}, {}
                for v, fn in jitted.items():
                    t0 = time.perf_counter()
                    compiled = fn.lower(params, jax_batch).compile()  # Compilation, excluded from timing.
                    compile_s[v] = time.perf_counter() - t0
                    fns[v] = lambda compiled=compiled: compiled(params, jax_batch).block_until_ready()

                def run_torch():
                    with torch.inference_mode():
                        return torch_model(**torch_batch).logits

                fns["torch"] = run_torch

                gc.collect()
                outputs, slowest = {}, 0.0
                for fw, fn in fns.items():  # Warm-up, untimed; the last outputs are compared.
                    for _ in range(args.warmup):
                        t0 = time.perf_counter()
                        outputs[fw] = np.asarray(fn())
                        slowest = max(slowest, time.perf_counter() - t0)
                diff = max(float(np.max(np.abs(outputs[v] - outputs["torch"]))) for v in variants)
                if not diff < 1e-3:
                    raise SystemExit(f"{name} b={batch_size} l={length}: JAX and torch logits differ by {diff}")

                n = args.repeats
                while n < 4 * args.repeats and n * slowest < args.min_seconds:
                    n += 1
                order = list(fns)
                times = {fw: [] for fw in fns}
                cpu = {fw: 0.0 for fw in fns}
                for i in range(n):
                    k = i % len(order)  # Rotate which framework goes first.
                    for fw in order[k:] + order[:k]:
                        wall, c = machine.timed(fns[fw])
                        times[fw].append(wall)
                        cpu[fw] += c
                med = {fw: statistics.median(t) for fw, t in times.items()}
                row = dict(model=name, batch=batch_size, length=length, runs=n, diff=diff, compile_s=compile_s)
                for fw in fns:
                    row[fw] = batch_size / med[fw]
                    row[fw + "_util"] = cpu[fw] / sum(times[fw])
                    row[fw + "_spread"] = (max(times[fw]) - min(times[fw])) / med[fw]
                row["ratio"] = row["jax"] / row["torch"]
                extra = ""
                if args.xla_default_too:
                    row["ratio_default"] = row["jax-xla-default"] / row["torch"]
                    extra = f"  [jax XLA defaults {row['jax-xla-default']:.1f} ex/s, ratio {row['ratio_default']:.2f}]"
                rows.append(row)
                print(f"  b={batch_size:<4d} l={length:<4d} jax {row['jax']:8.1f} ex/s  torch {row['torch']:8.1f} ex/s  "
                      f"ratio {row['ratio']:.2f}{extra}  ({n} runs, compile {compile_s['jax']:.1f}s, "
                      f"|dlogits| {diff:.1e})", flush=True)

    print(f"\nload average at end: {machine.load_average()}; benchmark took {time.perf_counter() - started:.0f}s")
    print("jax: the benchmark's JAX path (YNN fusions off); jax XLA-def: same function, XLA default options; "
          "cpu/wall: process CPU seconds per wall second while timing (cores busy); spread: (max-min)/median time\n")
    header = f"{'model':<10} {'batch':>5} {'length':>6} {'jax ex/s':>9} {'torch ex/s':>10} {'jax/torch':>9}"
    if args.xla_default_too:
        header += f" {'jax XLA-def ex/s':>16} {'XLA-def/torch':>13}"
    header += f"   {'runs':>4} {'cpu/wall jax':>12} {'torch':>5} {'spread jax':>10} {'torch':>5}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['model']:<10} {r['batch']:>5} {r['length']:>6} {r['jax']:>9.1f} {r['torch']:>10.1f} {r['ratio']:>9.2f}"
        if args.xla_default_too:
            line += f" {r['jax-xla-default']:>16.1f} {r['ratio_default']:>13.2f}"
        line += (f"   {r['runs']:>4} {r['jax_util']:>12.2f} {r['torch_util']:>5.2f} "
                 f"{r['jax_spread']:>10.2f} {r['torch_spread']:>5.2f}")
        print(line)
    if args.xla_default_too:
        print(f"(with XLA's default options the worst jax/torch ratio would be "
              f"{min(r['ratio_default'] for r in rows):.2f})")
    worst = min(r["ratio"] for r in rows)
    print(f"jax/torch forward throughput, worst case: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
