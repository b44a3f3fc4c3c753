"""Loss-variant research: the small member trained under several DAR variants, margins and weights, in several seeds,
each against cross entropy alone, as cascades with the run's large member.

    # on a finished ./run main folder (its difficulty labels and large member), 2 seeds each:
    python -m eval.compare_dar --run runs/quick --variants all_pairs logistic --margins 0.3 0.5 --weights 0.5 1.0 \
        --seeds 2 --output-dir runs/quick/dar_variants

Members that differ only in numbers (seed, margin, weight; cross entropy is DAR with weight 0) train as one
vmapped run per DAR variant (cascade_jax.stacked.fit_members). Every cascade (small member -> the run's large
member) is evaluated by cascade_jax.comparison.compare: operating points chosen on dev at each target and reported
on test, with paired bootstrap intervals of each variant minus cross entropy; DIS and ECE of the small member alone
on test with intervals of the same differences. Prints the table and writes results.json / results.md / curve.png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

if __package__ in (None, ""):  # `python eval/compare_dar.py`: make `cascade_jax` importable.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.compare_dar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished pipeline run folder (./run main): its difficulty labels, "
                                                "large member, data settings and members' optimiser")
    p.add_argument("--variants", nargs="+", default=["all_pairs"],
                   help="registered DAR variants (cascade_jax.losses.dar_variant_names(); default all_pairs)")
    p.add_argument("--margins", nargs="+", type=float, default=[0.3, 0.5], help="DAR margins (default 0.3 0.5)")
    p.add_argument("--weights", nargs="+", type=float, default=[0.5], help="DAR weights lambda (default 0.5)")
    p.add_argument("--seeds", type=int, default=2, help="seeds of every member (default 2)")
    p.add_argument("--targets", nargs="+", type=float, default=None, help="target speed-ups (default: the run's)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--output-dir", default=None, help="default: RUN/dar_variants")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _stat_rows(outputs, member_dirs: dict[str, list[str]], labels, weights, seed) -> dict:
    """DIS (hard = own errors) and ECE of each small member alone on test, and each minus cross entropy."""
    import numpy as np

    from cascade_jax import metrics, stats

    arrays = {}
    for name, dirs in member_dirs.items():
        arrays[name] = []
        for d in dirs:
            probs = np.asarray(outputs.sim(d, "test").probs[0], np.float64)
            conf, wrong = probs.max(-1), (probs.argmax(-1) != labels).astype(np.int64)
            arrays[name].append((conf, wrong))
    fns = {"ece": lambda c, w: metrics.expected_calibration_error(c, w == 0),
           "dis": lambda c, w: metrics.difficulty_inversion_score(c, w)}
    out = {}
    for name in member_dirs:
        out[name] = {}
        for key, fn in fns.items():
            value = float(np.mean([fn(*a) for a in arrays[name]]))
            row = {"value": value}
            if name != "cross entropy":
                a = stats.bootstrap_statistic(fn, arrays[name], weights, seed, f"{name}/{key}")
                b = stats.bootstrap_statistic(fn, arrays["cross entropy"], weights, seed, f"ce/{key}")
                low, high = stats.interval(a - b)
                direction = -1 if key == "ece" else 1
                row.update(difference=value - out["cross entropy"][key]["value"], interval=[low, high],
                           verdict=stats.verdict(low, high, direction))
            out[name][key] = row
    return out


def run(args) -> int:
    from cascade_jax import comparison, configs, data, models, report, stacked, stats, trainer
    from cascade_jax.pipeline import PipelineConfig, RunLayout, seed_member
    from cascade_jax.pipeline.evaluate import evaluation_splits

    layout = RunLayout(args.run)
    if not layout.config_file.exists() or not layout.member_model("large", seed_member(0)).exists():
        raise configs.ConfigError(f"{args.run} is not a pipeline run with a trained large member (./run main)")
    pipe = configs.from_dict(PipelineConfig, json.loads(layout.config_file.read_text()), str(layout.config_file))
    out = pathlib.Path(args.output_dir or layout.root / "dar_variants")
    run_cfg = configs.RunConfig(progress=not args.no_progress, eval_every=-1)
    member_dirs: dict[str, list[str]] = {}
    for variant in args.variants:
        variants = [stacked.Variant(name=f"ce-s{i}", seed=pipe.seed + i, dar_weight=0.0) for i in range(args.seeds)]
        variants += [stacked.Variant(name=f"m{m:g}-w{w:g}-s{i}", seed=pipe.seed + i, margin=m, dar_weight=w)
                     for m in args.margins for w in args.weights for i in range(args.seeds)]
        result = stacked.fit_members(stacked.MemberSetConfig(
            output_dir=str(out / variant), model=configs.ModelConfig(name=pipe.small_model), data=pipe.data,
            optim=pipe.members, loss=trainer.LossConfig(kind="dar", dar_variant=variant), run=run_cfg,
            variants=tuple(variants), difficulty_file=str(layout.labels_file("small"))))
        if result.status != "finished":
            print("compare_dar: stopped; run the same command again to resume", file=sys.stderr)
            return 0
        if "cross entropy" not in member_dirs:
            member_dirs["cross entropy"] = [str(result.model_dirs[f"ce-s{i}"]) for i in range(args.seeds)]
        for m in args.margins:
            for w in args.weights:
                member_dirs[f"{variant}, margin {m:g}, weight {w:g}"] = [
                    str(result.model_dirs[f"m{m:g}-w{w:g}-s{i}"]) for i in range(args.seeds)]
    task = data.get_task(pipe.data.task)
    tokenizer = models.tokenizer_for(pipe.large_model)
    encs, _ = evaluation_splits(pipe, tokenizer)
    outputs = comparison.Outputs(encs, task.num_labels, batch_size=pipe.eval.batch_size)
    large = str(layout.member_model("large", seed_member(0)))
    methods = [comparison.Method(name, "cascade", tuple((d, large) for d in dirs)) for name, dirs in member_dirs.items()]
    claims = [comparison.Claim(name, f"{name} beats cross entropy alone", name, "cross entropy")
              for name in member_dirs if name != "cross entropy"]
    reference = models.load_config(pathlib.Path(large))
    targets = args.targets or pipe.eval.targets
    result = comparison.compare(methods, outputs, targets=targets, claims=claims, resamples=args.resamples,
                                reference_layers=reference.num_hidden_layers, reference_config=reference,
                                sweep_points=pipe.eval.sweep_points, bootstrap_seed=pipe.seed)
    weights = stats.resample_weights(len(encs["test"]), min(args.resamples, 400), pipe.seed)
    small = _stat_rows(outputs, member_dirs, encs["test"].labels, weights, pipe.seed)
    paths = report.write_comparison(out, result, meta={"run": str(layout.root), "seeds": args.seeds,
                                                        "metric": comparison.primary(task.metric)},
                                    extra={"small_member_test": small}, title="DAR variants against cross entropy")
    lines = [paths["markdown"].read_text(), "## The small member alone on test (DIS: hard = own errors)\n",
             "| member | ECE (%) | minus CE [95%] | DIS (%) | minus CE [95%] |", "|---|---|---|---|---|"]
    for name, row in small.items():
        cells = []
        for key in ("ece", "dis"):
            r = row[key]
            cells += [report.pct(r["value"]), "-" if "interval" not in r else
                      f"{report.pct(r['difference'])} {report.interval_text(r['interval'])} {r['verdict']}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    paths["markdown"].write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from train import cli

    return cli.run_cli("compare_dar", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
