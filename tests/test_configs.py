"""Configuration: overrides, files, the resume check, the optimiser's step count, and flags generated from fields."""

import argparse
import json
import math

import numpy as np
import pytest

from cascade_jax import configs, difficulty, pipeline, trainer
from cascade_jax.pipeline.config import PipelineConfig
from train import cli


def test_override_by_path_leaf_name_and_short_flag():
    base = trainer.TrainConfig(output_dir="out")
    c = configs.override(base, {"optim.epochs": 5.0, "max_length": 64, "lr": 1e-3, "model": "minilm-l6",
                                "loss": "dar"})
    assert (c.optim.epochs, c.data.max_length, c.optim.learning_rate) == (5.0, 64, 1e-3)
    assert (c.model.name, c.loss.kind) == ("minilm-l6", "dar")
    assert base.optim.epochs == 3.0  # Frozen: the original is unchanged.
    whole = configs.override(base, {"optim": configs.OptimConfig(batch_size=8)})
    assert whole.optim == configs.OptimConfig(batch_size=8)


def test_unknown_and_ambiguous_keys_are_clear_errors():
    with pytest.raises(configs.ConfigError, match="no setting 'epochz'"):
        configs.create(trainer.TrainConfig, {"output_dir": "x", "epochz": 1})
    with pytest.raises(configs.ConfigError, match="ambiguous.*members.epochs"):
        configs.override(pipeline.make_config("quick", "x"), {"epochs": 1.0})
    with pytest.raises(configs.ConfigError, match="needs an output_dir"):
        configs.create(trainer.TrainConfig, {})
    with pytest.raises(configs.ConfigError, match="learning_rate must be a positive"):
        configs.OptimConfig(learning_rate=float("nan"))


def test_dict_round_trip_and_the_old_flat_layout_error(tmp_path):
    c = configs.create(difficulty.LabelConfig, {"output_dir": "x", "folds": 4, "buckets": (16, 32), "lr": 1e-4})
    d = json.loads(json.dumps(configs.to_dict(c)))
    assert d["layout"] == configs.LAYOUT_VERSION and d["data"]["buckets"] == [16, 32]
    assert configs.from_dict(difficulty.LabelConfig, d) == c
    old = {"output_dir": "x", "model": "minilm-l3", "learning_rate": 2e-5, "epochs": 3.0}  # cascade-jax 0.1
    with pytest.raises(configs.ConfigError, match="older cascade-jax.*new output directory"):
        configs.from_dict(trainer.TrainConfig, old, "runs/x/config.json")
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(configs.ConfigError, match="cannot be resumed"):
        configs.check_resume(tmp_path, "config.json", trainer.TrainConfig(output_dir=str(tmp_path)))


def test_check_resume_allows_run_settings_and_refuses_the_rest(tmp_path):
    c = configs.create(trainer.TrainConfig, {"output_dir": str(tmp_path), "lr": 1e-4})
    assert configs.check_resume(tmp_path, "config.json", c) is False  # Nothing there: a new run.
    configs.write(tmp_path, "config.json", c)
    assert configs.check_resume(tmp_path, "config.json", c) is True
    free = configs.override(c, {"progress": False, "log_every": 3, "backend": "pmap", "output_dir": "elsewhere"})
    assert configs.check_resume(tmp_path, "config.json", free) is True
    for change, field in [({"lr": 0.5}, "optim.learning_rate"), ({"seed": 3}, "seed"), ({"loss": "kd"}, "loss.kind"),
                          ({"max_steps": 9}, "optim.max_steps"), ({"train_subset": 10}, "data.train_subset"),
                          ({"model": "minilm-l6"}, "model.name"), ({"eval_every": -1}, "run.eval_every")]:
        with pytest.raises(configs.ResumeMismatchError, match=field.replace(".", r"\.")):
            configs.check_resume(tmp_path, "config.json", configs.override(c, change))


def test_make_optimizer_step_count_matches_a_plain_formula():
    for n, batch, epochs, cap in [(100, 32, 3.0, None), (96, 16, 0.5, None), (1, 8, 1.0, None), (1000, 32, 10.0, 7),
                                  (33, 32, 2.5, 1000)]:
        optim = configs.OptimConfig(batch_size=batch, epochs=epochs, max_steps=cap)
        _, total = configs.make_optimizer(optim, n)
        expected = max(1, math.ceil(epochs * math.ceil(n / batch)))
        assert total == (expected if cap is None else min(expected, cap)), (n, batch, epochs, cap)


def test_optimizer_warms_up_then_decays_and_skips_layernorm_and_biases():
    import jax.numpy as jnp

    optim = configs.OptimConfig(learning_rate=1.0, warmup_ratio=0.2, weight_decay=0.0, max_grad_norm=1e9,
                                batch_size=1, epochs=10)
    tx, total = configs.make_optimizer(optim, 1)
    assert total == 10
    schedule = configs.learning_rate_schedule(optim, total)
    np.testing.assert_allclose([float(schedule(i)) for i in range(11)],
                               [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0], atol=1e-7)
    params = {"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}, "LayerNorm": {"scale": jnp.ones(2)}}
    mask = configs.decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "LayerNorm": {"scale": False}}


def test_section_defaults_are_the_sections_own():
    d = configs.defaults(PipelineConfig)
    assert d["members.epochs"] == 10.0 and d["data.max_length"] == 128 and d["labels.optim.epochs"] == 10.0
    assert configs.defaults(difficulty.LabelConfig)["run.eval_batch_size"] == 64


def test_a_section_given_in_part_keeps_the_rest_of_its_own_default():
    # What the command lines build: only the flags given, the rest from the section's default, not its class's.
    c = configs.create(difficulty.LabelConfig, {"output_dir": "x", "max_length": 64, "progress": False})
    assert c.data.max_length == 64 and c.data.length_grouping == difficulty.LABEL_LENGTH_GROUPING
    assert c.run.progress is False and c.run.eval_batch_size == 64
    p = configs.create(PipelineConfig, {"output_dir": "x", "members.learning_rate": 1e-4, "labels.folds": 3})
    assert p.members.epochs == 10.0 and p.labels.optim.epochs == 10.0 and p.members.learning_rate == 1e-4
    # A saved config read back: a field it lacks takes the class default (what a run older than the field used).
    d = configs.to_dict(c)
    del d["data"]["length_grouping"]
    assert configs.from_dict(difficulty.LabelConfig, d).data.length_grouping == 0


def test_generated_flags_take_their_defaults_from_the_dataclasses():
    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser, trainer.TrainConfig)
    assert cli.config_overrides(parser.parse_args([])) == {}  # Nothing given: the dataclass defaults hold.
    args = parser.parse_args(["--output-dir", "o", "--lr", "1e-3", "--model", "m", "--buckets", "16", "32",
                              "--no-progress", "--loss", "dar", "--margin", "0.3"])
    c = configs.create(trainer.TrainConfig, cli.config_overrides(args))
    assert (c.optim.learning_rate, c.model.name, c.data.buckets, c.run.progress) == (1e-3, "m", (16, 32), False)
    assert (c.loss.kind, c.loss.margin, c.optim.epochs) == ("dar", 0.3, 3.0)
    help_text = parser.format_help()
    assert "(default: 2e-05)" in help_text and "--lr" in help_text and "--no-progress" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss", "hinge"])  # Choices come from the field too.


def test_pipeline_flags_are_dotted_where_a_name_repeats():
    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser, PipelineConfig, exclude=("preset", "cuts"), flat_sections=("data",))
    args = parser.parse_args(["--members.epochs", "5", "--labels.folds", "4", "--train-subset", "50",
                              "--dar.margins", "0.3", "0.5"])
    c = pipeline.make_config("quick", "o", cli.config_overrides(args))
    assert (c.members.epochs, c.labels.folds, c.data.train_subset, c.dar.margins) == (5.0, 4, 50, (0.3, 0.5))
    assert c.shallow.epochs == pipeline.PRESETS["quick"]["shallow.epochs"] != 5.0  # The preset's, untouched.
