"""Forward throughput of our Flax BERT against PyTorch transformers on CPU, with the same weights, in float32 and
bfloat16, and how close either comes to the machine's matmul rate.

For each model, batch size and sequence length this times the library's own inference path,
``cascade_jax.xla.jit(models.logits_fn(module))`` (which applies the library's CPU compile options itself, see
``cascade_jax/xla.py``), against ``transformers.BertForSequenceClassification`` (eval mode,
``torch.inference_mode()``, transformers' default attention implementation) on one identical batch, and prints
examples per second for both. Unless ``--no-xla-default`` is given, the same function with XLA's defaults (plain
``jax.jit``, and XLA's einsum-softmax-einsum attention instead of the library's fused CPU kernel,
``cascade_jax/attention.py``) is timed too and shown in its own columns, so the effect of the library's choices
stays visible.

bfloat16 (unless ``--no-bf16``), timed in the same interleaved loop:

* JAX: ``models.from_pretrained(name, num_labels=2, dtype=jnp.bfloat16)`` then ``models.cast_params(params,
  jnp.bfloat16)`` (bf16 weights and activations; LayerNorm and softmax stay float32 inside the model; logits come
  out float32), through the same ``xla.jit`` (and plain ``jax.jit`` in the XLA-default columns);
* PyTorch, two ways: the same weights with ``model.to(torch.bfloat16)`` (bf16 weights), and the float32 model under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``. The faster of the two is the reference of the bf16 ratio.
  Every bf16 output is checked against the float32 torch logits with a loose tolerance (``BF16_TOLERANCE``).

The torch model gets exactly our weights: the JAX parameters (pretrained encoder plus the seeded pooler and
classifier) are written with ``models.save_pretrained`` and read back with ``from_pretrained``; the benchmark
checks that both give the same float32 logits before timing.

The physical limit. A large square GEMM of each dtype measured (``[n, n] @ [n, n]``, jitted by ``xla.jit``, by
``jax.jit`` too unless ``--no-xla-default``, and ``torch.matmul``; ``n`` doubled from 512 until one ``xla.jit`` call
takes >= 0.1 s, or ``--gemm-size``; median of ``--gemm-repeats`` calls) is timed at the start and at the end of the
run: the best of these medians is the machine's achievable matmul FLOP/s for that dtype (XLA:CPU and PyTorch may
differ a lot there, e.g. in bf16, where oneDNN uses AVX512-BF16 instructions). Every configuration's achieved FLOP/s
is examples/s x ``flops.bert_flops(module.config, length)`` (the dense layers and attention matmuls; elementwise
work not counted), printed with its fraction of the GEMM rate of its dtype.

Inputs are random token ids (never special tokens) with a full attention mask and token type 0, so there is no
padding: this measures dense compute, not tokenisation or padding handling.

Each variant runs in a spawned process of its own (``eval/workers.py``), which loads its framework and model and
makes, per configuration, its forward call on the batch the benchmark sends it; the benchmark drives the processes
in turn. ``--in-process`` runs them all in this one process instead, as sessions up to 13 did: there a framework's
calls right after the other's re-fault the memory the other gave back (docs/bench_model.md, session 13: our fp32 at
batch 32 up to ~30% slower than alone), which neither framework's own users pay.

Timing: compilation (ahead of time) and warm-up calls (oneDNN primitive creation, allocator growth) are
excluded; JAX outputs are waited for with ``block_until_ready``; all variants are interleaved per configuration
(rotating which goes first) so that machine noise hits all of them; each variant's time is the median of its runs.
In every round each variant first makes ``--settle`` untimed calls (default 1), then its timed one, so that what is
timed is a call after a call of its own, not the first one after another framework's (docs/bench_model.md: on the
2-core VMs a JAX bf16 call right after torch's calls took up to 2x as long, in kernel time).
Process CPU time is recorded as well: ``cpu/wall`` near the core count means all cores were busy for that
variant; well below it means the machine was shared with other work (or the framework left cores idle).

Run from the repository root::

    python -m eval.bench_model          # the full grid, fp32 and bf16 (~10 min on 2 idle cores, longer if shared)
    python -m eval.bench_model --models minilm-l6 --batch-sizes 256 --lengths 128 --repeats 2   # a quick look
    python -m eval.bench_model --smoke    # seconds: minilm-l3, batch 2, length 16, 1 run; checks it runs, no numbers

The last lines are ``fraction of GEMM rate: R`` (minilm-l6, fp32, batch 256 at the largest length timed: achieved
FLOP/s over the fp32 GEMM rate; the line above it says which configuration was used if that one was not timed),
``bf16 jax/torch forward throughput, worst case: R`` (the smallest bf16 jax / best-torch-bf16 ratio; absent with
``--no-bf16``) and, the very last, ``jax/torch forward throughput, worst case: R`` (float32, library defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import pathlib
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python eval/bench_model.py`: make `cascade_jax` importable from the repo root.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from eval import machine, workers  # noqa: E402

FP32_TOLERANCE = 1e-3  # |JAX fp32 - torch fp32| logits.
BF16_TOLERANCE = 0.15  # |any bf16 - torch fp32| logits: bf16 keeps ~3 significant digits.
# The configuration of the 'fraction of GEMM rate' line, when it is in the grid.
GEMM_FRACTION_CONFIG = dict(model="minilm-l6", batch=256)

# --smoke: the smallest grid (one warm-up call stays: its outputs are the logits checks), a tiny GEMM.
SMOKE_DEFAULTS = dict(models=["minilm-l3"], batch_sizes=[2], lengths=[16], repeats=1, min_seconds=0.0, warmup=1,
                      gemm_size=128, gemm_repeats=1)

FP32_JAX = ("jax", "jax-xla-default")
BF16_JAX = ("jax-bf16", "jax-bf16-xla-default")
BF16_TORCH = ("torch-bf16", "torch-autocast")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench_model",
        description="Forward examples/second of the Flax BERT (cascade_jax.xla.jit of models.logits_fn, the "
        "library's defaults) against PyTorch transformers BertForSequenceClassification with the same weights, "
        "float32 and bfloat16, on CPU, and the achieved FLOP/s against a large GEMM's. Random token ids, full "
        "attention masks. Prints tables and, last, 'fraction of GEMM rate: R', 'bf16 jax/torch forward throughput, "
        "worst case: R' and 'jax/torch forward throughput, worst case: R'.",
    )
    p.add_argument("--models", nargs="+", default=["minilm-l3", "minilm-l6"],
                   help="built-in model names or local Hugging Face directories (default: minilm-l3 minilm-l6)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256], help="batch sizes (default: 32 256)")
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 128], help="sequence lengths (default: 64 128)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed forward passes per variant and configuration, at least (default: 3); the median "
                   "is reported")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="for cheap configurations, keep repeating (up to 4x --repeats) until each variant has "
                   "run this long in total, to steady the median (default: 3.0)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per variant before timing, after JAX's ahead-of-time compilation "
                   "(default: 1)")
    p.add_argument("--settle", type=int, default=1, help=machine.SETTLE_HELP.format(what="call"))
    p.add_argument("--in-process", dest="isolate", action="store_false",
                   help="run every variant in this one process, as sessions up to 13 did, instead of each in a "
                   "spawned process of its own (the default; docs/bench_model.md: in one process a framework's "
                   "calls slow the other's by up to 30%% at batch 32). Unlike before session 14, each variant "
                   "then holds its own copy of the weights")
    p.add_argument("--no-xla-default", dest="xla_default_too", action="store_false",
                   help="do not also time the JAX functions (and GEMMs) compiled with XLA's default options "
                   "(saves about a third of the run time)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="skip the bfloat16 variants (JAX bf16, torch bf16 weights, torch autocast) and the bf16 GEMM")
    p.add_argument("--gemm-size", type=int, default=0,
                   help="n of the [n, n] @ [n, n] GEMM that gives the machine's matmul rate (default 0: doubled "
                   f"from {machine.GEMM_START} until one call takes >= {machine.GEMM_MIN_SECONDS} s, at most "
                   f"{machine.GEMM_CAP})")
    p.add_argument("--gemm-repeats", type=int, default=5,
                   help="timed GEMM calls per dtype and compile-option set, at the start and at the end (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores both frameworks may use (default: all). Pins the process to the first N "
                   "cores before JAX and torch start, which sizes XLA's CPU thread pool, and sets "
                   "torch.set_num_threads(N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids and the classifier head")
    args = machine.parse_args_with_smoke(p, argv, SMOKE_DEFAULTS)
    if args.repeats < 1 or args.warmup < 1 or args.gemm_repeats < 1 or args.settle < 0:
        p.error("--repeats, --warmup and --gemm-repeats must be at least 1, --settle at least 0")
    if args.gemm_size < 0:
        p.error("--gemm-size must be 0 (automatic) or positive")
    return args


def fraction_row(rows: list[dict]) -> tuple[dict, bool]:
    """The row of the 'fraction of GEMM rate' line: minilm-l6, batch 256, the largest length timed for it; if
    that is not in the grid, the closest: minilm-l6 if timed, then the largest batch, then the largest length.
    Returns (row, whether it is the preferred configuration)."""
    want = GEMM_FRACTION_CONFIG
    row = max(rows, key=lambda r: (r["model"] == want["model"], r["batch"] == want["batch"], r["batch"],
                                   r["length"], r["layers"]))
    return row, row["model"] == want["model"] and row["batch"] == want["batch"]


# ----------------------------------------------------------------------------------------------------------------
# The variants, as eval.workers factories: each loads its framework and model, and makes one forward call per
# configuration (the token ids of one batch). With --in-process they all live in this process.


def jax_forward(model: str, seed: int, bf16: bool = False, xla_default: bool = False):
    """``make(ids) -> (call, {"compile_s"})``: the library's inference path, ``xla.jit(models.logits_fn(module))``
    (with ``xla_default``: plain ``jax.jit`` and XLA's attention ops instead of the fused CPU kernel), in float32
    or bfloat16 (bf16 weights and activations)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cascade_jax import models, xla

    jax.config.update("jax_platforms", "cpu")
    if bf16:
        module, params = models.from_pretrained(model, num_labels=2, dtype=jnp.bfloat16, seed=seed)
        params = models.cast_params(params, jnp.bfloat16)
    else:
        module, params = models.from_pretrained(model, num_labels=2, seed=seed)
    if xla_default:  # XLA's attention ops instead of the fused CPU kernel
        module = module.clone(config=dataclasses.replace(module.config, kernels="xla"))
    fn = (jax.jit if xla_default else xla.jit)(models.logits_fn(module))

    def make(ids):
        batch = jax.device_put({"input_ids": ids.astype(np.int32), "attention_mask": np.ones(ids.shape, np.int32),
                                "token_type_ids": np.zeros(ids.shape, np.int32)})
        t0 = time.perf_counter()
        compiled = fn.lower(params, batch).compile()  # Compilation, excluded from timing.
        return (lambda: compiled(params, batch).block_until_ready()), {"compile_s": time.perf_counter() - t0}

    return make


def torch_forward(model_dir: str, kind: str = "fp32", threads: int | None = None):
    """``make(ids) -> (call, {"attention"})``: ``BertForSequenceClassification`` in eval mode under
    ``torch.inference_mode()``; ``kind`` "fp32", "bf16" (``.to(torch.bfloat16)``) or "autocast" (float32 weights
    under ``torch.autocast("cpu", dtype=torch.bfloat16)``)."""
    import torch
    import transformers

    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir).eval()
    if kind == "bf16":
        model = model.to(torch.bfloat16)
    autocast = kind == "autocast"

    def make(ids):
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.ones(ids.shape, dtype=torch.long),
                 "token_type_ids": torch.zeros(ids.shape, dtype=torch.long)}

        def call():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return model(**batch).logits

        return call, {"attention": getattr(model.config, "_attn_implementation", "?")}

    return make


def variant_specs(args, name: str, model_dir: str) -> dict:
    """``{variant: (factory, kwargs)}`` of the variants this run times for model ``name``."""
    jax_f, torch_f = "eval.bench_model:jax_forward", "eval.bench_model:torch_forward"
    specs = {"jax": (jax_f, dict(model=name, seed=args.seed))}
    if args.xla_default_too:
        specs["jax-xla-default"] = (jax_f, dict(model=name, seed=args.seed, xla_default=True))
    if args.bf16:
        specs["jax-bf16"] = (jax_f, dict(model=name, seed=args.seed, bf16=True))
        if args.xla_default_too:
            specs["jax-bf16-xla-default"] = (jax_f, dict(model=name, seed=args.seed, bf16=True, xla_default=True))
    specs["torch"] = (torch_f, dict(model_dir=model_dir, threads=args.threads))
    if args.bf16:
        specs["torch-bf16"] = (torch_f, dict(model_dir=model_dir, kind="bf16", threads=args.threads))
        specs["torch-autocast"] = (torch_f, dict(model_dir=model_dir, kind="autocast", threads=args.threads))
    return specs


def time_configuration(args, name: str, cfg, variants: dict, ids, first: bool) -> dict:
    """Make every variant's call for the batch ``ids``, warm up, check the logits against torch float32, time the
    variants interleaved; print the configuration's lines and return its row."""
    import numpy as np

    from cascade_jax import flops

    batch_size, length = ids.shape
    infos = {v: w.make(ids=ids) for v, w in variants.items()}
    compile_s = {v: info["compile_s"] for v, info in infos.items() if "compile_s" in info}
    if first:
        print(f"  torch attention implementation: {infos['torch']['attention']}", flush=True)
    gc.collect()
    outputs, slowest = {}, 0.0
    for v, w in variants.items():  # Warm-up, untimed; the last outputs are compared.
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            outputs[v] = w.run(1, keep=True)
            slowest = max(slowest, time.perf_counter() - t0)
    diffs = {v: float(np.max(np.abs(outputs[v] - outputs["torch"]))) for v in variants if v != "torch"}
    for v, d in diffs.items():
        tol = FP32_TOLERANCE if v in FP32_JAX else BF16_TOLERANCE
        if not d < tol:
            raise SystemExit(f"{name} b={batch_size} l={length}: {v} logits differ from torch float32 by {d} "
                             f"(tolerance {tol})")

    n = args.repeats
    while n < 4 * args.repeats and n * slowest < args.min_seconds:
        n += 1
    timing = workers.interleaved(variants, n, 0, args.settle)  # Warmed up above.
    row = dict(model=name, batch=batch_size, length=length, layers=cfg.num_hidden_layers, runs=n, diffs=diffs,
               compile_s=compile_s, flops=float(flops.bert_flops(cfg, length)))
    for v, r in timing.items():
        row[v] = batch_size / r["median"]
        row[v + "_util"] = r["cpu_per_wall"]
        row[v + "_spread"] = r["spread"]
    row["ratio"] = row["jax"] / row["torch"]
    extra = ""
    if args.xla_default_too:
        row["ratio_default"] = row["jax-xla-default"] / row["torch"]
        extra = f"  [jax XLA defaults {row['jax-xla-default']:.1f} ex/s, ratio {row['ratio_default']:.2f}]"
    print(f"  b={batch_size:<4d} l={length:<4d} fp32 jax {row['jax']:8.1f} ex/s  torch {row['torch']:8.1f} "
          f"ex/s  ratio {row['ratio']:.2f}{extra}  ({n} runs, compile {compile_s['jax']:.1f}s, "
          f"|dlogits| {diffs['jax']:.1e}); {row['jax'] * row['flops'] / 1e9:.1f} GFLOP/s", flush=True)
    if args.bf16:
        row["torch_bf16_ref"] = max(BF16_TORCH, key=lambda v: row[v])
        ref = row[row["torch_bf16_ref"]]
        row["ratio_bf16"] = row["jax-bf16"] / ref
        row["bf16_over_fp32"] = row["jax-bf16"] / row["jax"]
        extra = ""
        if args.xla_default_too:
            row["ratio_bf16_default"] = row["jax-bf16-xla-default"] / ref
            extra = (f"  [jax XLA defaults {row['jax-bf16-xla-default']:.1f} ex/s, ratio "
                     f"{row['ratio_bf16_default']:.2f}]")
        print(f"  {'':<13} bf16 jax {row['jax-bf16']:8.1f} ex/s ({row['bf16_over_fp32']:.2f}x fp32)  "
              f"torch bf16 weights {row['torch-bf16']:.1f}, autocast {row['torch-autocast']:.1f} ex/s  "
              f"ratio {row['ratio_bf16']:.2f} (vs {row['torch_bf16_ref']}){extra}  |dlogits| vs torch "
              f"fp32: " + ", ".join(f"{v} {diffs[v]:.1e}" for v in BF16_JAX + BF16_TORCH if v in diffs)
              + f"; {row['jax-bf16'] * row['flops'] / 1e9:.1f} GFLOP/s", flush=True)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        # Before jax/torch import: XLA sizes its CPU thread pool from the schedulable cores, OpenMP likewise.
        available = sorted(os.sched_getaffinity(0))
        if not 1 <= args.threads <= len(available):
            raise SystemExit(f"--threads must be between 1 and {len(available)}")
        os.sched_setaffinity(0, available[: args.threads])

    from cascade_jax import provenance

    if args.smoke:
        print(machine.SMOKE_NOTE)
    print(f"provenance: {json.dumps(provenance.provenance())}", flush=True)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from cascade_jax import attention, dense, models, xla

    jax.config.update("jax_platforms", "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    print(f"CPU: {machine.describe()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), flax {__import__('flax').__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"threads: torch.get_num_threads()={torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()}); XLA CPU runs each op on its own intra-op thread pool, "
          f"sized to the schedulable cores ({len(os.sched_getaffinity(0))}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    print(f"inputs: random token ids in [1000, vocab), full attention mask, token type 0; float32"
          f"{' and bfloat16' if args.bf16 else ''}; warm-up {args.warmup} call(s) excluded; >= {args.repeats} "
          f"timed runs each, interleaved, each after {args.settle} untimed call(s) of its own (--settle), median; "
          + ("each variant in a process of its own" if args.isolate else "all variants in this process (--in-process)"))
    # The benchmark's JAX path is the library's: xla.jit applies xla.compiler_options() itself. Unless
    # --no-xla-default, the same functions are also compiled with XLA's default options (plain jax.jit).
    print(f"JAX path: cascade_jax.xla.jit, compiler options {xla.compiler_options()} (the library's defaults on "
          f"this backend)" + ("; also timed: plain jax.jit, XLA's defaults" if args.xla_default_too else ""))
    print(f"CPU kernels (library defaults): attention: {attention.status()}; bf16 dense: {dense.status()}")
    print(f"load average at start: {machine.load_average()}", flush=True)
    started = time.perf_counter()

    # The machine's matmul rate, at the start (and again at the end).
    gemm_dtypes = {"fp32": jnp.float32} | ({"bf16": jnp.bfloat16} if args.bf16 else {})
    gemm_jits = {"xla.jit": xla.jit} | ({"jax.jit": jax.jit} if args.xla_default_too else {})
    sizes = {d: args.gemm_size or machine.size_gemm(dtype) for d, dtype in gemm_dtypes.items()}
    gemms = {"start": machine.gemm_rates(gemm_dtypes, sizes, gemm_jits, True, args.gemm_repeats)}
    for d, by_way in gemms["start"].items():
        print(f"GEMM {d} n={sizes[d]} at start: " + ", ".join(
            f"{j} {r['flops_per_s'] / 1e9:.1f} GFLOP/s ({r['seconds']:.3f} s/call, cpu/wall {r['cpu_per_wall']:.2f})"
            for j, r in by_way.items()), flush=True)

    rows = []
    rng = np.random.default_rng(args.seed)
    where = workers.Spawned if args.isolate else workers.Runner
    for name in args.models:
        module, params = models.from_pretrained(name, num_labels=2, seed=args.seed)
        cfg = module.config
        print(f"\n{name}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            models.save_pretrained(module, params, tmp)  # The torch variants read exactly our weights.
            variants = {}
            try:
                for v, (factory, kw) in variant_specs(args, name, tmp).items():
                    variants[v] = where(factory, label=f"{name} {v}", **kw)
                for v in variants.values():  # All built (they start at once) before any compiles and is timed.
                    v.ready()
                for batch_size in args.batch_sizes:
                    for length in args.lengths:
                        ids = rng.integers(1000, cfg.vocab_size, size=(batch_size, length), dtype=np.int64)
                        rows.append(time_configuration(args, name, cfg, variants, ids, first=not rows or
                                                       rows[-1]["model"] != name))
            finally:
                for v in variants.values():
                    v.close()

    gemms["end"] = machine.gemm_rates(gemm_dtypes, sizes, gemm_jits, True, args.gemm_repeats)
    best = machine.best_gemm(gemms)  # dtype -> (flops/s, where): the best median of start/end x ways.

    print(f"\nload average at end: {machine.load_average()}; benchmark took {time.perf_counter() - started:.0f}s")
    print("\nGEMM [n, n] @ [n, n], GFLOP/s (2 n^3 FLOPs; median of "
          f"{args.gemm_repeats} calls; xla.jit = the library's options, jax.jit = XLA's defaults, torch = "
          "torch.matmul); the GEMM rate of a dtype is the best of them:")
    print("\n".join(machine.describe_gemms(gemms, best)))

    print("\njax: the library's path (xla.jit of models.logits_fn); jax XLA-def: same function, plain jax.jit (XLA's "
          "default options); cpu/wall: process CPU seconds per wall second while timing (cores busy); spread: "
          "(max-min)/median time\n")
    print("Table 1. float32")
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

    if args.bf16:
        print("\nTable 2. bfloat16 (jax: bf16 weights and activations through xla.jit; torch bf16: .to(bfloat16); "
              "autocast: fp32 weights under torch.autocast; jax/torch against the faster torch variant; |dlogits| "
              "against torch float32)")
        header = (f"{'model':<10} {'batch':>5} {'length':>6} {'jax ex/s':>9} {'bf16/fp32':>9} {'torch bf16':>10} "
                  f"{'autocast':>8} {'jax/torch':>9}")
        if args.xla_default_too:
            header += f" {'jax XLA-def ex/s':>16} {'XLA-def/torch':>13}"
        header += f" {'|dlogits| jax':>13} {'torch':>7} {'autocast':>8} {'cpu/wall jax':>12}"
        print(header)
        print("-" * len(header))
        for r in rows:
            line = (f"{r['model']:<10} {r['batch']:>5} {r['length']:>6} {r['jax-bf16']:>9.1f} "
                    f"{r['bf16_over_fp32']:>9.2f} {r['torch-bf16']:>10.1f} {r['torch-autocast']:>8.1f} "
                    f"{r['ratio_bf16']:>9.2f}")
            if args.xla_default_too:
                line += f" {r['jax-bf16-xla-default']:>16.1f} {r['ratio_bf16_default']:>13.2f}"
            line += (f" {r['diffs']['jax-bf16']:>13.1e} {r['diffs']['torch-bf16']:>7.1e} "
                     f"{r['diffs']['torch-autocast']:>8.1e} {r['jax-bf16_util']:>12.2f}")
            print(line)

    print(f"\nTable {3 if args.bf16 else 2}. Achieved GFLOP/s (examples/s x flops.bert_flops(config, length)) and its "
          f"fraction of the GEMM rate of the same dtype (fp32 {best['fp32'][0] / 1e9:.1f}"
          + (f", bf16 {best['bf16'][0] / 1e9:.1f}" if args.bf16 else "") + " GFLOP/s)")
    cols = ["jax", "torch"] + (["jax-xla-default"] if args.xla_default_too else [])
    if args.bf16:
        cols += ["jax-bf16", "torch-bf16", "torch-autocast"]
        cols += ["jax-bf16-xla-default"] if args.xla_default_too else []
    header = f"{'model':<10} {'batch':>5} {'length':>6} {'GFLOP/ex':>8}" + "".join(f" {c:>20}" for c in cols)
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['model']:<10} {r['batch']:>5} {r['length']:>6} {r['flops'] / 1e9:>8.2f}"
        for c in cols:
            achieved = r[c] * r["flops"]
            rate = best["bf16" if "bf16" in c or c == "torch-autocast" else "fp32"][0]
            line += f" {achieved / 1e9:>11.1f} ({achieved / rate:>5.1%})"
        print(line)

    if args.xla_default_too:
        print(f"(with XLA's default options the worst jax/torch ratio would be "
              f"{min(r['ratio_default'] for r in rows):.2f}"
              + (f"; bf16 {min(r['ratio_bf16_default'] for r in rows):.2f}" if args.bf16 else "") + ")")
    frow, preferred = fraction_row(rows)
    achieved = frow["jax"] * frow["flops"]
    which = (f"{frow['model']}, fp32, batch {frow['batch']}, length {frow['length']}"
             + ("" if preferred else f" ({GEMM_FRACTION_CONFIG['model']} batch {GEMM_FRACTION_CONFIG['batch']} not "
                                     "timed: the largest configuration that was)"))
    print(f"fraction of GEMM rate below: {which}: jax {achieved / 1e9:.1f} GFLOP/s over the fp32 GEMM's "
          f"{best['fp32'][0] / 1e9:.1f} GFLOP/s")
    print(f"fraction of GEMM rate: {achieved / best['fp32'][0]:.3f}")
    if args.bf16:
        print(f"bf16 jax/torch forward throughput, worst case: {min(r['ratio_bf16'] for r in rows):.2f}")
    print(f"jax/torch forward throughput, worst case: {min(r['ratio'] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
