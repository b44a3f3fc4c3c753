"""The whole CascadeBERT pipeline as resumable stages: labels -> members -> baselines -> evaluation -> results page.

  config = make_config("quick", "runs/quick", {"data.train_subset": 800})
  run(config, log=print)                               # resumable; returns {stage: seconds}
  write_results_page("runs/quick", "docs/results.md")

Modules: :mod:`.config` (PipelineConfig, presets), :mod:`.layout` (the run folder), :mod:`.stages` (training),
:mod:`.evaluate` (the evaluation stage), :mod:`.runner` (running), :mod:`.page` (the results page).
"""

from cascade_jax.pipeline.config import PRESETS, PipelineConfig, make_config
from cascade_jax.pipeline.layout import RunLayout, ce_member, dar_member, seed_member
from cascade_jax.pipeline.page import results_markdown, write_results_page
from cascade_jax.pipeline.runner import STAGE_ORDER, evaluation_stale, run, stage_done

__all__ = ["PRESETS", "PipelineConfig", "RunLayout", "STAGE_ORDER", "ce_member", "dar_member", "evaluation_stale",
           "make_config", "results_markdown", "run", "seed_member", "stage_done", "write_results_page"]
