"""Training-step speed on CPU: our jitted step against PyTorch, the cost of DAR, and 1-8 forced CPU devices.

Three measurements, all float32, dropout on, one identical random batch per shape (token ids never special tokens,
full attention mask, token type 0, random labels and difficulty):

1. **JAX vs PyTorch**, for each ``--lengths`` (default: batch 32 x length 32 and 64); also the JAX step in
   bfloat16 mixed precision (model dtype bf16, float32 parameters and optimiser; ``--no-bf16`` skips it). ``trainer.make_train_step``
   (CE) mapped by ``parallel.DataParallel`` (shard_map) on one device with ``configs.make_optimizer`` (global-norm
   clipping + AdamW, no decay on LayerNorm/biases), exactly as ``trainer.fit`` runs it (the library's defaults:
   training steps get XLA's default compile options, see ``cascade_jax/xla.py``), including placing the host batch
   with ``shard_batch`` every step; against transformers' ``BertForSequenceClassification`` in train mode with
   ``torch.optim.AdamW`` (the same decay groups, ``clip_grad_norm_(1.0)``, a LambdaLR schedule). Both start from
   the same weights: the minilm-l3 encoder plus a seeded classifier head, written by ``models.save_pretrained`` and
   read by ``from_pretrained``. Also timed: the same JAX step compiled with XLA:CPU's YNNPACK library fusions off
   (``--no-ynn-off`` skips it; see ``docs/bench_model.md`` for why that option matters on CPU).
   The physical limit: a large fp32 GEMM (``[n, n] @ [n, n]`` by ``xla.jit``, ``jax.jit`` and ``torch.matmul``,
   median of ``--gemm-repeats`` calls, at the start and the end of part 1; the best is the machine's matmul rate)
   against the JAX step's achieved FLOP/s, counted as 3 x the forward FLOPs of ``flops.bert_flops`` per example
   (the backward pass costs about twice the forward: gradients with respect to activations and to weights;
   the optimiser, dropout and other elementwise work are not counted).
2. **DAR cost.** The same JAX step with ``LossConfig(kind="dar")`` (all_pairs, margin 0.5, weight 0.5) against CE
   alone, interleaved, at the largest of ``--lengths``. Reported: the median over rounds of (DAR time / CE time)
   within each round, which cancels load that drifts between rounds on a shared machine; the ratio of the two
   medians is printed too (goal: at most 1.05).
3. **Forced CPU devices.** For N in 1 2 4 8, a subprocess with
   ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` runs the CE step over all N devices with the same global
   batch (the largest of ``--lengths``). Forced host devices are threads of one process sharing this machine's
   cores: this measures the overhead of splitting a step over devices, not scaling.

Part 1 runs each step (JAX, JAX variants, torch) in a spawned process of its own (``eval/workers.py``; ``--in-process``
keeps them all in this one): in one process, a framework's first step after the other's re-faults memory the other
gave back, which a training loop of one framework never pays (docs/bench_train.md). Parts 2 and 3 time JAX alone.

Timing: compilation (ahead of time) and warm-up steps are excluded; JAX results are waited for with
``block_until_ready`` (torch is synchronous); frameworks/variants are interleaved per round, rotating which goes
first, so machine noise hits all of them; each time is the median over rounds. In every round each variant first
runs ``--settle`` untimed steps (default 1), then its timed one: what is timed is a step as a training loop runs it,
after a step of its own, not the first step after the other framework's (which re-faults the memory the other one
freed: up to 0.45 s more on a 0.53 s JAX step, measured in docs/bench_train.md). Process CPU seconds per wall
second are recorded too: on a machine shared with other work that is how to tell a busy neighbour from an idle
framework.

Run from the repository root (about 6-10 minutes on 2 cores)::

    python -m eval.bench_train
    python -m eval.bench_train --repeats 3 --dar-repeats 5 --devices 1 2 --device-repeats 3   # a quick look
    python -m eval.bench_train --smoke   # under a minute: batch 4, length 16, 1 round each, 2 devices; no numbers

The last lines are ``jax/torch train step, worst case: R`` (the smallest JAX/PyTorch examples-per-second ratio
over the shapes of part 1, the JAX step being the library's), ``jax train step, fraction of GEMM rate: R`` (at the
largest shape, the line above it says which) and, the very last, ``dar/ce step time: R``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # `python eval/bench_train.py`: make `cascade_jax` importable from the repo root.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from eval import machine, workers  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
LEARNING_RATE = 2e-5
# --smoke: every part, with the smallest settings (JSON results, unless --json says where, go to a temporary folder).
SMOKE_DEFAULTS = dict(model="minilm-l3", batch_size=4, lengths=[16], repeats=1, dar_repeats=1, devices=[2],
                      device_repeats=1, warmup=1, gemm_size=128, gemm_repeats=1)
TRAIN_FLOPS_PER_FORWARD = 3  # A training step's FLOPs ~ 3 x the forward's (backward ~ 2 x forward).


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench_train",
        description="Training examples/second of our jitted train step against PyTorch transformers + AdamW, the "
        "step-time cost of DAR over CE, and steps/second on 1-8 forced CPU devices (float32, dropout on). Prints "
        "a table for each and, last, 'jax/torch train step, worst case: R', 'jax train step, fraction of GEMM rate: "
        "R' and 'dar/ce step time: R'.",
    )
    p.add_argument("--model", default="minilm-l3",
                   help="built-in model name or local HF directory (default: minilm-l3)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (default: 32)")
    p.add_argument("--lengths", nargs="+", type=int, default=[32, 64],
                   help="sequence lengths of part 1 (default: 32 64); parts 2 and 3 use the largest")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per framework in part 1 (default: 5)")
    p.add_argument("--dar-repeats", type=int, default=11, help="timed steps each for CE and DAR (default: 11)")
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8],
                   help="forced CPU device counts for part 3, each in its own subprocess (default: 1 2 4 8)")
    p.add_argument("--device-repeats", type=int, default=5, help="timed steps per device count (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing, after compilation (default: 2)")
    p.add_argument("--settle", type=int, default=1, help=machine.SETTLE_HELP.format(what="step"))
    p.add_argument("--in-process", dest="isolate", action="store_false",
                   help="run part 1's steps (JAX and torch) all in this one process, as sessions up to 13 did, "
                   "instead of each in a spawned process of its own (the default: docs/bench_train.md); each "
                   "step still builds its own model and optimiser state")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads(N) for part 1 (default: torch's own choice, one per core)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="skip the bfloat16 mixed-precision JAX step in part 1 (compute in bf16, parameters and "
                        "optimiser in float32: model dtype bfloat16, as `--dtype bfloat16` in training)")
    p.add_argument("--no-ynn-off", dest="ynn_off", action="store_false",
                   help="in part 1, do not also time the JAX step compiled with YNNPACK fusions off")
    p.add_argument("--gemm-size", type=int, default=0,
                   help="n of the fp32 [n, n] @ [n, n] GEMM that gives the machine's matmul rate (default 0: "
                   f"doubled from {machine.GEMM_START} until one call takes >= {machine.GEMM_MIN_SECONDS} s)")
    p.add_argument("--gemm-repeats", type=int, default=5,
                   help="timed GEMM calls per way (xla.jit, jax.jit, torch), at the start and the end of part 1")
    p.add_argument("--skip", nargs="+", default=[], choices=["torch", "dar", "devices"],
                   help="parts to leave out (the last line needs 'dar')")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch, the classifier head and dropout")
    p.add_argument("--worker-devices", type=int, default=None, help=argparse.SUPPRESS)  # Part 3's subprocess.
    args = machine.parse_args_with_smoke(p, argv, SMOKE_DEFAULTS)
    if args.smoke and args.json and machine.inside_docs(args.json):
        p.error("--smoke writes nothing into docs/: give --json another path")
    if min(args.repeats, args.dar_repeats, args.device_repeats, args.warmup, args.gemm_repeats) < 1 or \
            args.settle < 0:
        p.error("--repeats, --dar-repeats, --device-repeats, --warmup and --gemm-repeats must be at least 1, "
                "--settle at least 0")
    if min(args.lengths) < 1 or args.gemm_size < 0:
        p.error("--lengths must be positive, --gemm-size 0 (automatic) or positive")
    args.length = max(args.lengths)  # Parts 2 and 3.
    if any(n < 1 or args.batch_size % n for n in args.devices):
        p.error(f"every --devices count must divide --batch-size {args.batch_size}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Machine and timing helpers.


def random_batch(batch_size: int, length: int, vocab: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1000, vocab, size=(batch_size, length), dtype=np.int32),
        "attention_mask": np.ones((batch_size, length), np.int32),
        "token_type_ids": np.zeros((batch_size, length), np.int32),
        "label": rng.integers(0, 2, size=batch_size, dtype=np.int32),
        "valid": np.ones(batch_size, bool),
        "difficulty": rng.integers(0, 2, size=batch_size).astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------------------------
# The two training steps.


def jax_step(module, params, batch, dp, loss_kind: str = "ce", compiler_options=None, seed: int = 0):
    """``(run, compile_seconds)``: ``run()`` does one training step as ``trainer.fit`` does, waits, returns loss."""
    import jax

    from cascade_jax import configs, trainer

    loss = trainer.LossConfig(kind=loss_kind, dar_variant="all_pairs", margin=0.5, dar_weight=0.5)
    tx, _ = configs.make_optimizer(configs.OptimConfig(learning_rate=LEARNING_RATE, max_steps=10_000), 10_000 * 32)
    state = trainer.new_state(params, tx, seed)
    step = dp.map_step(trainer.make_train_step(module, tx, loss, dropout=True))
    holder = [dp.replicate(state, donated=True)]
    t0 = time.perf_counter()
    lowered = step.lower(holder[0], dp.shard_batch(batch))
    compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    compile_s = time.perf_counter() - t0

    def run():
        holder[0], metrics = compiled(holder[0], dp.shard_batch(batch))  # The state is donated, as in fit.
        jax.block_until_ready(holder[0])
        return metrics["loss"]

    return run, compile_s


def torch_step(model_dir: str, batch: dict, seed: int = 0):
    """``run()``: one transformers + torch.optim.AdamW training step on ``batch`` (dropout on); returns the loss."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LEARNING_RATE)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 1000))
    inputs = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.from_numpy(batch["label"]).long()

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(**inputs, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return out.loss.detach()

    return run, getattr(model.config, "_attn_implementation", "?")


def train_variant(kind: str, model: str, batch_size: int, seed: int, model_dir: str | None = None,
                  torch_threads: int | None = None):
    """An ``eval.workers`` factory of part 1: ``make(length) -> (one training step, info)`` for ``kind`` "jax" (the
    library's step), "jax ynn-off" (YNNPACK fusions off), "jax bf16" (mixed precision) or "torch" (reads
    ``model_dir``)."""
    if kind == "torch":
        import torch
        import transformers

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        transformers.logging.set_verbosity_error()
        vocab = transformers.AutoConfig.from_pretrained(model_dir).vocab_size

        def make_torch(length):
            run, attn = torch_step(model_dir, random_batch(batch_size, length, vocab, seed), seed)
            return run, {"attention": attn}

        return make_torch

    import jax
    import jax.numpy as jnp

    from cascade_jax import models, parallel

    jax.config.update("jax_platforms", "cpu")
    module, params = models.from_pretrained(model, num_labels=2, seed=seed)
    if kind == "jax bf16":  # Mixed precision: the same float32 parameters, bf16 compute.
        module = models.BertForSequenceClassification(module.config, dtype=jnp.bfloat16)
    elif kind not in ("jax", "jax ynn-off"):
        raise ValueError(f"unknown training-step variant {kind!r}")
    dp = parallel.DataParallel("shard_map", parallel.data_mesh(jax.devices()[:1]))

    def make_jax(length):
        batch = random_batch(batch_size, length, module.config.vocab_size, seed)
        run, compile_s = jax_step(module, params, batch, dp, "ce", YNN_OFF if kind == "jax ynn-off" else None, seed)
        return run, {"compile_s": compile_s}

    return make_jax


def time_steps(args, cfg, fns: dict, length: int) -> dict:
    """Part 1 at one length: make every variant's step (``eval.workers`` variants), one untimed step each (the
    first losses, printed), then interleaved rounds. Returns the shape's results."""
    from cascade_jax import flops

    infos = {k: f.make(length=length) for k, f in fns.items()}
    compile_s = {k: info["compile_s"] for k, info in infos.items() if "compile_s" in info}
    first = {k: float(f.run(1, keep=True)) for k, f in fns.items()}  # Losses should agree roughly.
    print(f"  batch {args.batch_size} x length {length}: first-step losses: "
          + ", ".join(f"{k} {v:.4f}" for k, v in first.items())
          + f"; torch attention: {infos['torch']['attention']}; compile: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in compile_s.items()), flush=True)
    # The step above was the first warm-up step.
    part1 = workers.interleaved(fns, args.repeats, args.warmup - 1, args.settle)
    step_flops = TRAIN_FLOPS_PER_FORWARD * float(flops.bert_flops(cfg, length)) * args.batch_size
    for k, r in part1.items():
        r["examples_per_s"] = args.batch_size / r["median"]
        r["flops_per_s"] = step_flops / r["median"]
    ratio = part1["jax"]["examples_per_s"] / part1["torch"]["examples_per_s"]
    print(f"    jax {part1['jax']['examples_per_s']:.1f} ex/s, torch {part1['torch']['examples_per_s']:.1f} "
          f"ex/s, ratio {ratio:.2f}; jax {part1['jax']['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    return {"length": length, "rows": part1, "compile_s": compile_s, "first_loss": first, "step_flops": step_flops,
            "ratio": ratio}


# ----------------------------------------------------------------------------------------------------------------
# Part 3's subprocess: the CE step over every (forced) device of this process.


def device_worker(args) -> int:
    import jax

    from cascade_jax import models, parallel

    jax.config.update("jax_platforms", "cpu")
    n = jax.device_count()
    if n != args.worker_devices:
        raise SystemExit(f"expected {args.worker_devices} devices, JAX sees {n} (XLA_FLAGS not applied?)")
    module, params = models.from_pretrained(args.model, num_labels=2, seed=args.seed)
    batch = random_batch(args.batch_size, args.length, module.config.vocab_size, args.seed)
    dp = parallel.DataParallel("shard_map", parallel.data_mesh(jax.devices()))
    run, compile_s = jax_step(module, params, batch, dp, "ce", seed=args.seed)
    r = workers.interleaved({"step": run}, args.device_repeats, args.warmup)["step"]
    keep = ("times", "median", "cpu_per_wall", "cpu_per_step", "spread")
    print(json.dumps({"devices": n, "compile_s": compile_s, **{k: r[k] for k in keep}}))
    return 0


def run_device_counts(args) -> list[dict]:
    rows = []
    for n in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip())
        cmd = [sys.executable, "-m", "eval.bench_train", "--worker-devices", str(n), "--model", args.model,
               "--batch-size", str(args.batch_size), "--lengths", str(args.length), "--warmup", str(args.warmup),
               "--device-repeats", str(args.device_repeats), "--seed", str(args.seed), "--devices", "1"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"device-count worker N={n} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {n} device(s): {1 / row['median']:.2f} steps/s ({row['median']:.3f} s/step, compile "
              f"{row['compile_s']:.1f}s, subprocess {row['wall_s']:.0f}s)", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker_devices is not None:
        return device_worker(args)

    from cascade_jax import provenance

    if args.smoke:
        print(machine.SMOKE_NOTE)
    info = {"provenance": provenance.provenance()}
    print(f"provenance: {json.dumps(info['provenance'])}", flush=True)

    import jax
    import jax.numpy as jnp

    from cascade_jax import models, parallel, xla

    jax.config.update("jax_platforms", "cpu")
    started = time.perf_counter()
    info |= {"machine_start": machine.info(), "args": {k: v for k, v in vars(args).items() if k != "worker_devices"}}
    m = info["machine_start"]
    print(f"CPU: {m['cpu']}; nproc={m['nproc']} (of {m['cpus_online']} online)")
    print(f"load average at start: {m['load']}")
    print(f"python {platform.python_version()}, jax {jax.__version__}, flax {__import__('flax').__version__}",
          end="")
    if "torch" not in args.skip:
        import torch
        import transformers

        if args.torch_threads is not None:
            torch.set_num_threads(args.torch_threads)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        print(f", torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"transformers {transformers.__version__}", end="")
    print(f"\nmodel {args.model}, batch {args.batch_size}, lengths {' '.join(map(str, args.lengths))} (parts 2 and "
          f"3: {args.length}), float32, dropout on; warm-up "
          f"{args.warmup} step(s) excluded; medians of interleaved rounds, each timed step after {args.settle} untimed "
          f"step(s) of its own (--settle); part 1: "
          + ("each step in a process of its own" if args.isolate else "all steps in this process (--in-process)"),
          flush=True)

    module, params = models.from_pretrained(args.model, num_labels=2, seed=args.seed)
    cfg = module.config
    print(f"{args.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, dropout "
          f"{cfg.hidden_dropout_prob}/{cfg.attention_probs_dropout_prob}", flush=True)
    batch = random_batch(args.batch_size, args.length, cfg.vocab_size, args.seed)
    dp = parallel.DataParallel("shard_map", parallel.data_mesh(jax.devices()[:1]))
    results = {}

    # Part 1: JAX vs torch, per length; the fp32 GEMM rate at its start and end.
    if "torch" not in args.skip:
        print("\n[1] training step, JAX (trainer step on 1 device, library defaults) vs PyTorch", flush=True)
        gemm_n = {"fp32": args.gemm_size or machine.size_gemm(jnp.float32)}
        gemm_ways = {"xla.jit": xla.jit, "jax.jit": jax.jit}
        gemms = {"start": machine.gemm_rates({"fp32": jnp.float32}, gemm_n, gemm_ways, True, args.gemm_repeats)}
        print("  fp32 GEMM at start: " + ", ".join(f"{w} {r['flops_per_s'] / 1e9:.1f} GFLOP/s"
                                                  for w, r in gemms["start"]["fp32"].items()), flush=True)
        shapes = []
        kinds = ["jax"] + (["jax ynn-off"] if args.ynn_off else []) + (["jax bf16"] if args.bf16 else []) + ["torch"]
        where = workers.Spawned if args.isolate else workers.Runner
        with tempfile.TemporaryDirectory() as tmp:
            models.save_pretrained(module, params, tmp)  # The torch step reads exactly our weights.
            fns = {}
            try:
                for k in kinds:
                    fns[k] = where("eval.bench_train:train_variant", label=k, kind=k, model=args.model,
                                   batch_size=args.batch_size, seed=args.seed, model_dir=tmp,
                                   torch_threads=args.torch_threads)
                for f in fns.values():  # All built (they start at once) before any compiles: honest compile times.
                    f.ready()
                for length in args.lengths:
                    shapes.append(time_steps(args, cfg, fns, length))
            finally:
                for f in fns.values():
                    f.close()
        gemms["end"] = machine.gemm_rates({"fp32": jnp.float32}, gemm_n, gemm_ways, True, args.gemm_repeats)
        results["jax_vs_torch"] = {"shapes": shapes, "gemm": gemms, "gemm_best": machine.best_gemm(gemms)}

    # Part 2: DAR over CE.
    if "dar" not in args.skip:
        print("\n[2] DAR (all_pairs, margin 0.5, weight 0.5, random difficulty) vs CE, JAX step on 1 device",
              flush=True)
        fns = {}
        for kind in ("ce", "dar"):
            fns[kind], _ = jax_step(module, params, batch, dp, kind, seed=args.seed)
        part2 = workers.interleaved(fns, args.dar_repeats, args.warmup, args.settle)
        rounds = [d / c for c, d in zip(part2["ce"]["times"], part2["dar"]["times"])]
        results["dar_vs_ce"] = {"rows": part2, "ratio": part2["dar"]["median"] / part2["ce"]["median"],
                                "paired_ratio_median": statistics.median(rounds)}
        del fns

    # Part 3: forced device counts.
    if "devices" not in args.skip:
        print(f"\n[3] CE step over N forced CPU devices, global batch {args.batch_size} (one subprocess each)",
              flush=True)
        results["devices"] = run_device_counts(args)

    info["machine_end"] = machine.info()
    info["results"] = results
    info["total_s"] = time.perf_counter() - started
    print(f"\nload average at end: {info['machine_end']['load']}; benchmark took {info['total_s']:.0f}s")

    if "jax_vs_torch" in results:
        part1 = results["jax_vs_torch"]
        gemm_rate = part1["gemm_best"]["fp32"][0]
        print(f"\nfp32 GEMM [n, n] @ [n, n], GFLOP/s (2 n^3 FLOPs, median of {args.gemm_repeats} calls; xla.jit = the "
              f"library's inference options, jax.jit = XLA's defaults, torch = torch.matmul); the best is the GEMM "
              f"rate:")
        print("\n".join(machine.describe_gemms(part1["gemm"], part1["gemm_best"])))
        print(f"\nTable 1. Training step, {args.model}, batch {args.batch_size}, float32, dropout on ({args.repeats} "
              f"timed rounds); GFLOP/s = {TRAIN_FLOPS_PER_FORWARD} x forward FLOPs (flops.bert_flops) per example / "
              f"s, of GEMM = its fraction of the fp32 GEMM rate ({gemm_rate / 1e9:.1f} GFLOP/s)")
        header = (f"{'length':>6} {'step':<12} {'s/step':>7} {'examples/s':>10} {'vs torch':>8} {'GFLOP/s':>7} "
                  f"{'of GEMM':>7} {'cpu s/step':>10} {'cpu/wall':>8} {'spread':>6}")
        print(header + "\n" + "-" * len(header))
        for shape in part1["shapes"]:
            rows = shape["rows"]
            torch_eps = rows["torch"]["examples_per_s"]
            for k, r in rows.items():
                print(f"{shape['length']:>6} {k:<12} {r['median']:>7.3f} {r['examples_per_s']:>10.1f} "
                      f"{r['examples_per_s'] / torch_eps:>8.2f} {r['flops_per_s'] / 1e9:>7.1f} "
                      f"{r['flops_per_s'] / gemm_rate:>7.1%} {r['cpu_per_step']:>10.3f} {r['cpu_per_wall']:>8.2f} "
                      f"{r['spread']:>6.2f}")
    if "dar_vs_ce" in results:
        d = results["dar_vs_ce"]
        print(f"\nTable 2. DAR cost, JAX step on 1 device ({args.dar_repeats} timed rounds)")
        header = f"{'loss':<5} {'s/step':>7} {'examples/s':>10} {'cpu s/step':>10} {'cpu/wall':>8} {'spread':>6}"
        print(header + "\n" + "-" * len(header))
        for k, r in d["rows"].items():
            print(f"{k:<5} {r['median']:>7.3f} {args.batch_size / r['median']:>10.1f} {r['cpu_per_step']:>10.3f} "
                  f"{r['cpu_per_wall']:>8.2f} {r['spread']:>6.2f}")
        print(f"dar/ce CPU seconds per step: {d['rows']['dar']['cpu_per_step'] / d['rows']['ce']['cpu_per_step']:.3f} "
              f"(less sensitive to waiting for a busy machine's cores than wall time)")
        print(f"dar/ce: median of per-round ratios {d['paired_ratio_median']:.3f} (reported below); ratio of medians "
              f"{d['ratio']:.3f} (goal: at most 1.05)")
    if "devices" in results:
        rows = results["devices"]
        base = rows[0]["median"]
        print(f"\nTable 3. CE step over N forced CPU devices, global batch {args.batch_size} "
              f"({args.device_repeats} timed steps each; forced devices share {info['machine_start']['nproc']} cores: "
              f"overhead, not scaling)")
        header = (f"{'devices':>7} {'rows/device':>11} {'s/step':>7} {'steps/s':>7} {'vs first':>8} {'cpu s/step':>10} "
                  f"{'cpu/wall':>8} {'compile s':>9}")
        print(header + "\n" + "-" * len(header))
        for r in rows:
            print(f"{r['devices']:>7} {args.batch_size // r['devices']:>11} {r['median']:>7.3f} "
                  f"{1 / r['median']:>7.2f} "
                  f"{base / r['median']:>8.2f} {r['cpu_per_step']:>10.3f} {r['cpu_per_wall']:>8.2f} "
                  f"{r['compile_s']:>9.1f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    elif args.smoke:  # Exercise the JSON writing too, into a temporary folder that is removed again.
        with tempfile.TemporaryDirectory(prefix="bench_train_smoke_") as tmp:
            path = pathlib.Path(tmp) / "bench_train.json"
            path.write_text(json.dumps(info, indent=2) + "\n")
            json.loads(path.read_text())
    if "jax_vs_torch" in results:
        part1 = results["jax_vs_torch"]
        largest = max(part1["shapes"], key=lambda sh: sh["length"])
        gemm_rate = part1["gemm_best"]["fp32"][0]
        achieved = largest["rows"]["jax"]["flops_per_s"]
        print(f"jax train step, fraction of GEMM rate below: batch {args.batch_size} x length {largest['length']}, "
              f"{achieved / 1e9:.1f} GFLOP/s ({TRAIN_FLOPS_PER_FORWARD} x forward FLOPs) over the fp32 GEMM's "
              f"{gemm_rate / 1e9:.1f} GFLOP/s")
        print(f"jax train step, fraction of GEMM rate: {achieved / gemm_rate:.3f}")
        if args.bf16:
            worst = max(sh["rows"]["jax bf16"]["median"] / sh["rows"]["jax"]["median"] for sh in part1["shapes"])
            print(f"jax bf16/fp32 train step time, worst case: {worst:.2f} (mixed precision; below 1: bf16 faster)")
        print(f"jax/torch train step, worst case: {min(sh['ratio'] for sh in part1['shapes']):.2f}")
    if "dar_vs_ce" in results:
        print(f"dar/ce step time: {results['dar_vs_ce']['paired_ratio_median']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
