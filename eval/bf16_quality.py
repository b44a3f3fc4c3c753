"""What bfloat16 inference costs in quality: a finished run's main cascade in float32 and in bfloat16 on the test
split, at the thresholds the run chose on dev.

    python -m eval.bf16_quality --run runs/quick

For each target speed-up the run chose a threshold for (its report's ``cascade_thresholds``), both precisions run
the cascade for real (``cascade.run``) on the test split; it prints the accuracy of each, their difference, the
share of exit decisions that are the same, and the layer speed-up of each. The last lines are
``bf16 - fp32 accuracy, worst case: D points`` and ``same exit decisions, worst case: S``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if __package__ in (None, ""):  # `python eval/bf16_quality.py`: make `cascade_jax` importable.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.bf16_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished pipeline run folder (./run main)")
    p.add_argument("--split", default="test", help="the split evaluated (default: test)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch size (default 64)")
    return p


def compare(run: str, split: str = "test", batch_size: int = 64) -> list[dict]:
    """One row per target: accuracy and speed-up of the run's cascade in float32 and bfloat16, and the share of
    identical exit decisions."""
    import jax.numpy as jnp
    import numpy as np

    from cascade_jax import cascade, comparison, configs, data, models, provenance
    from cascade_jax.pipeline import PipelineConfig, RunLayout

    layout = RunLayout(run)
    if not layout.results_file.exists():
        raise configs.ConfigError(f"{layout.results_file} is missing: {run} is not a finished pipeline run")
    doc = json.loads(layout.results_file.read_text())
    chosen = doc.get("cascade_thresholds")
    if not chosen:
        raise configs.ConfigError(f"{layout.results_file} has no cascade_thresholds (written by an older version)")
    pipe = configs.from_dict(PipelineConfig, json.loads(layout.config_file.read_text()), str(layout.config_file))
    dirs = [layout.root / m for m in chosen["members"]]
    task = data.get_task(pipe.data.task)
    enc = data.encode_split(task, split, pipe.data.source, tokenizer=models.tokenizer_for(dirs[0]),
                            max_length=pipe.data.max_length)
    inputs = comparison.padded_inputs(enc)
    stages = {name: [comparison.load_stage(d, task.num_labels, dtype) for d in dirs]
              for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16))}
    rows = []
    for target, threshold in chosen["thresholds"].items():
        results = {name: cascade.run(s, inputs, threshold, batch_size, length_multiple=comparison.LENGTH_MULTIPLE)
                   for name, s in stages.items()}
        acc = {name: float(np.mean(r.predictions == enc.labels)) for name, r in results.items()}
        rows.append({"target": float(target), "threshold": threshold, "fp32_accuracy": acc["fp32"],
                     "bf16_accuracy": acc["bf16"], "difference": acc["bf16"] - acc["fp32"],
                     "same_exits": float(np.mean(results["fp32"].exit_stage == results["bf16"].exit_stage)),
                     "same_predictions": float(np.mean(results["fp32"].predictions == results["bf16"].predictions)),
                     "fp32_speedup": results["fp32"].layer_speedup, "bf16_speedup": results["bf16"].layer_speedup})
    print(f"provenance: {provenance.provenance()}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        rows = compare(args.run, args.split, args.batch_size)
        print("| target | threshold | fp32 accuracy | bf16 accuracy | bf16 - fp32 (points) | same exits | same "
              "answers | fp32 speed-up | bf16 speed-up |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['target']:g}x | {r['threshold']:.4f} | {100 * r['fp32_accuracy']:.2f} | "
                  f"{100 * r['bf16_accuracy']:.2f} | {100 * r['difference']:+.2f} | {100 * r['same_exits']:.2f}% | "
                  f"{100 * r['same_predictions']:.2f}% | {r['fp32_speedup']:.2f}x | {r['bf16_speedup']:.2f}x |")
        worst = max(rows, key=lambda r: abs(r["difference"]))["difference"]  # The largest change either way.
        print(f"bf16 - fp32 accuracy, worst case: {100 * worst:+.2f} points")
        print(f"same exit decisions, worst case: {min(r['same_exits'] for r in rows):.4f}")
        return 0

    from train import cli

    return cli.run_cli("bf16_quality", body)


if __name__ == "__main__":
    sys.exit(main())
