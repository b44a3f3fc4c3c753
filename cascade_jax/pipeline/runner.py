"""Running the pipeline: the stages in order, each skipped when its marker says it finished, resumable."""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Callable

from cascade_jax import configs, host_memory, provenance
from cascade_jax.pipeline.config import EVAL_SECTION, RESUME_FREE, PipelineConfig
from cascade_jax.pipeline.layout import CONFIG_FILE, RunLayout

STAGE_ORDER = ("labels", "labels-shallow", "small", "large", "shallow", "kd", "bert-kl", "deebert", "pabee",
               "fastbert", "pkd", "theseus", "pd", "evaluate")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _marker(layout: RunLayout, name: str) -> dict | None:
    """Stage ``name``'s marker if the stage finished (the marker exists and holds what a finished stage writes)."""
    marker = layout.marker(name)
    if not marker.exists():
        return None
    try:
        saved = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("seconds"), (int, float)) else None


def stage_done(layout: RunLayout, name: str) -> bool:
    """Whether stage ``name`` finished."""
    return _marker(layout, name) is not None


def evaluation_stale(layout: RunLayout) -> list[str]:
    """The training stages that finished after the evaluate stage did (e.g. one deleted and run again): its results
    no longer describe the trained models, so it runs again."""
    evaluate = _marker(layout, "evaluate")
    if evaluate is None:
        return []
    finished = {n: _marker(layout, n) for n in STAGE_ORDER[:-1]}
    return [n for n, m in finished.items() if m is not None and float(m.get("finished", 0.0)) >
            float(evaluate.get("finished", 0.0))]


def check_config(config: PipelineConfig, log: Callable[[str], None]) -> None:
    """Refuse to reuse a run folder made with other settings; when only the evaluation settings changed, the
    evaluate stage runs again."""
    layout = RunLayout(config.output_dir)
    evaluation = tuple(p for p in configs.leaves(PipelineConfig) if p.startswith(EVAL_SECTION + "."))
    configs.check_resume(layout.root, CONFIG_FILE, config, free=RESUME_FREE + evaluation)
    if layout.config_file.exists():
        saved = json.loads(layout.config_file.read_text())
        if configs.differences(saved.get(EVAL_SECTION, {}), configs.to_dict(config)[EVAL_SECTION]):
            layout.marker("evaluate").unlink(missing_ok=True)
            log("the evaluation settings changed: the evaluate stage runs again")


def _memory_line() -> str:
    """After a stage: free heap pages given back (:func:`host_memory.release`), then the process's peak and current
    resident memory, in GB."""
    host_memory.release()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    now = host_memory.resident_bytes()
    return f"peak memory {peak / 1e9:.1f} GB" + ("" if now is None else f", {now / 1e9:.1f} GB now")


def run(config: PipelineConfig, *, log: Callable[[str], None] = lambda s: None,
        only: tuple[str, ...] | None = None) -> dict:
    """Run the stages not yet done (``only``: a subset of :data:`STAGE_ORDER`); returns ``{stage: seconds}``.

    A stage that finished earlier is skipped; an interrupted one resumes from its own checkpoints. ``log`` receives
    a line per stage. Once the evaluate stage is done, ``OUTPUT/report/results.md`` is (re)written from the results
    and the stage markers. A folder holding a run with other settings raises :class:`configs.ResumeMismatchError`.
    """
    from cascade_jax.pipeline.evaluate import stage_evaluate
    from cascade_jax.pipeline.page import write_results_page
    from cascade_jax.pipeline.stages import TRAINING_STAGES

    unknown = set(only or ()) - set(STAGE_ORDER)
    if unknown:
        raise configs.ConfigError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGE_ORDER}")
    layout = RunLayout(config.output_dir)
    check_config(config, log)
    configs.write(layout.root, CONFIG_FILE, config)
    made_by = provenance.provenance()  # The code this invocation loaded: recorded with every stage it runs.
    names = [n for n in STAGE_ORDER if only is None or n in only]
    start = time.perf_counter()
    spent: dict[str, float] = {}
    for i, name in enumerate(names, 1):
        newer = evaluation_stale(layout) if name == "evaluate" else []
        if newer:
            layout.marker(name).unlink()
            log(f"[{i}/{len(names)}] evaluate: {', '.join(newer)} finished after the last evaluation; it runs again")
        if stage_done(layout, name):
            log(f"[{i}/{len(names)}] {name}: done earlier, skipped ({layout.marker(name)})")
            continue
        log(f"[{i}/{len(names)}] {name}: running (elapsed {minutes(time.perf_counter() - start)})")
        t0 = time.perf_counter()
        if name == "evaluate":
            stage_evaluate(config, log, made_by=made_by)
        else:
            TRAINING_STAGES[name](config)
        spent[name] = time.perf_counter() - t0
        marker = layout.marker(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"stage": name, "seconds": spent[name], "finished": time.time(),
                                      "git_commit": made_by["git_commit"]}) + "\n")
        log(f"[{i}/{len(names)}] {name}: finished in {minutes(spent[name])} ({_memory_line()})")
    if stage_done(layout, "evaluate"):  # The run's own page, with the time per stage.
        write_results_page(layout.root, layout.report_dir / "results.md")
    return spent
