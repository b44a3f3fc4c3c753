"""Multi-host training: two JAX processes on this machine (gloo CPU collectives) against one process.

Each process is started with ``--xla_force_host_platform_device_count=2`` and joins the run with
``parallel.initialize_distributed("127.0.0.1:PORT", 2, i)``, so the run has 4 global devices; both run
``trainer.fit`` on the same tiny config with the default shard_map backend and share one output directory, as a
shared filesystem would. The reference is one process with 4 forced CPU devices, fed the same global batches.
Process 1 is sent SIGTERM mid-run (process 0 is not): both must stop at the same step, checkpoint, and resume
exactly, so the two-process run also exercises pre-emption, orbax saves from several processes and restore.
The pmap backend gets a shorter two-process check of its own.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest


from cascade_jax import checkpoints, configs, data, models, trainer
from tests import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, STEPS, TERM_AT = 16, 6, 3  # 96 training rows: one epoch of 6 global batches, 8 rows per process.
TIMEOUT_S = 300  # All workers together take 40-110 s on 2 shared cores; past this, all are killed.
# DAR pairs within each device's rows. "global" (all_gather of confidences across processes) gives the same
# parameters but, with 2 forced devices per process over gloo, takes ~3.4 s a step here against ~0.1 s (1 device
# per process: ~0.2 s), which would triple this test's time.
PAIR_SCOPE = "device"

WORKER = r"""
import json, os, pathlib, signal, sys
spec = json.loads(sys.argv[1])
if spec["num_processes"] > 1:
    from cascade_jax import parallel
    parallel.initialize_distributed(spec["coordinator"], spec["num_processes"], spec["process_id"],
                                    initialization_timeout=120)
import jax, numpy as np
from cascade_jax import configs, data, trainer

out = os.path.abspath(spec["output_dir"])
writes = set()

def audit(event, args):  # Every file this process opens for writing under the run directory.
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path, mode, flags = os.path.abspath(os.fspath(args[0])), args[1], args[2]
        writing = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and path.startswith(out + os.sep):
            writes.add(os.path.relpath(path, out))

sys.addaudithook(audit)
fed = []  # The ids of the rows this process kept from each global batch.
keep_rows = data.process_rows

def recording_process_rows(batch, *a, **k):
    local = keep_rows(batch, *a, **k)
    fed.append([int(i) for i in local["id"]])
    return local

data.process_rows = recording_process_rows  # trainer calls data.process_rows(...)

cfg = configs.create(trainer.TrainConfig, {**{k: v for k, v in spec["config"].items() if k != "loss"},
                                           "loss": trainer.LossConfig(**spec["config"]["loss"])})
first = {}

def on_step(step, m):
    if step == 1 and not first:
        first.update({k: float(np.ravel(v)[0]) for k, v in m.items()})
    if step == spec["term_at"] and spec["term_process"] == jax.process_index():
        os.kill(os.getpid(), signal.SIGTERM)

runs = []
for _ in range(2):  # A SIGTERM run stops early; the second call resumes. An uninterrupted run ends on the first.
    r = trainer.fit(cfg, on_step=on_step)
    runs.append({"step": r.step, "status": r.status})
    if r.status == "finished":
        break
leaves = jax.tree_util.tree_leaves(r.params)
np.savez(spec["result"] + ".npz", *leaves)
json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
           "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
           "runs": runs, "fed": fed, "writes": sorted(writes), "first": first, "best": r.best},
          open(spec["result"] + ".json", "w"))
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(jobs: list[tuple[dict, int]]) -> list[dict]:
    """Start one worker per ``(spec, forced CPU devices)`` at once, wait for all (bounded), kill all on any
    failure; the workers' results."""
    procs, logs = [], []
    try:
        for spec, devices in jobs:
            env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
            log = open(spec["result"] + ".log", "w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=REPO, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
                break
            time.sleep(0.2)
        codes = [p.poll() for p in procs]
        if codes != [0] * len(procs):
            tails = []
            for (spec, _), log in zip(jobs, logs):
                log.seek(0)
                tails.append(f"--- {spec['result']} ---\n" + log.read()[-3000:])
            why = "timed out" if None in codes else f"exit codes {codes}"
            pytest.fail(f"worker(s) failed ({why}):\n" + "\n".join(tails))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for log in logs:
            log.close()
    return [json.loads(pathlib.Path(spec["result"] + ".json").read_text()) for spec, _ in jobs]


def load_leaves(result_prefix: str) -> list[np.ndarray]:
    with np.load(result_prefix + ".npz") as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b))


def restore_last_state(run_dir: pathlib.Path, model: pathlib.Path):
    """The latest checkpointed TrainState of a run (restored here, in one process) and its meta."""
    _, params = models.from_pretrained(model, num_labels=2)
    params = jax.device_get(params)
    tx, _ = configs.make_optimizer(configs.OptimConfig(max_steps=STEPS), STEPS * BATCH)
    target = trainer.new_state(params, tx, 0)
    ckpt = checkpoints.Checkpoints(run_dir)
    try:
        state, meta = ckpt.restore_state(target)
        best, best_meta = ckpt.restore_best(params)
    finally:
        ckpt.close()
    return state, meta, best, best_meta


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
    model = tiny.make_model_dir(tmp_path / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(tmp_path / "data", n_train=96, n_dev=48)
    ids = np.asarray(data.load_split("rotten_tomatoes", "train", folder)["id"])
    assert len(ids) == 96
    rng = np.random.default_rng(3)
    difficulty = tmp_path / "difficulty.jsonl"
    difficulty.write_text("".join(json.dumps({"id": int(i), "difficulty": int(rng.random() < 0.4)}) + "\n"
                                  for i in ids))

    def spec(name, pid, nproc, coordinator=None, term_process=-1):
        config = {"output_dir": str(tmp_path / name), "model.name": str(model)}
        config.update(task="rotten_tomatoes", source=str(folder),
                      batch_size=BATCH, max_steps=STEPS, learning_rate=1e-3, max_length=32, dropout=False,
                      progress=False, log_every=1, eval_every=2, checkpoint_every=2, keep_checkpoints=5,
                      difficulty_file=str(difficulty),
                      loss=dict(kind="dar", pair_scope=PAIR_SCOPE, margin=0.5, dar_weight=0.5))
        return dict(config=config, process_id=pid, num_processes=nproc, coordinator=coordinator,
                    result=str(tmp_path / f"{name}-{pid}"), output_dir=config["output_dir"],
                    term_at=TERM_AT, term_process=term_process)

    # The reference (one process, 4 devices) and the two processes (2 devices each, one shared directory) at once.
    coordinator = f"127.0.0.1:{free_port()}"
    ref, *multi = launch([(spec("one", 0, 1), 4)] + [(spec("two", i, 2, coordinator, term_process=1), 2)
                                                       for i in range(2)])

    assert ref["device_count"] == 4 and ref["runs"] == [{"step": STEPS, "status": "finished"}]
    for i, r in enumerate(multi):
        assert (r["process_index"], r["process_count"], r["device_count"], r["local_device_count"]) == (i, 2, 4, 2)
        # SIGTERM reached process 1 only; both stopped at that step, saved, and resumed to the end.
        assert r["runs"] == [{"step": TERM_AT, "status": "preempted"}, {"step": STEPS, "status": "finished"}], r

    # Each process fed only its own half of every global batch: process 0 the first 8 rows, process 1 the last 8;
    # after the resume, both went on from the batch after the SIGTERM step.
    global_batches = ref["fed"]
    assert len(global_batches) == STEPS and sorted(sum(global_batches, [])) == sorted(ids.tolist())
    half = BATCH // 2
    for i, r in enumerate(multi):
        assert r["fed"] == [b[i * half:(i + 1) * half] for b in global_batches], f"process {i} fed other rows"
    assert not set(sum(multi[0]["fed"], [])) & set(sum(multi[1]["fed"], []))

    # The same parameters as one process on the same global batches (dropout off). Only float32 summation order
    # may differ (gloo's cross-process all-reduce against XLA's in-process one) over 6 AdamW steps at lr 1e-3 with
    # CE + DAR; seen here: 1e-8 against ~2e-3 moved. The bound, 1e-5, is under 1% of the distance moved.
    ref_params = load_leaves(str(tmp_path / "one-0"))
    initial = [np.asarray(x) for x in jax.tree_util.tree_leaves(models.from_pretrained(model, num_labels=2)[1])]
    moved = max_abs_diff(initial, ref_params)
    assert moved > 1e-3, moved
    assert multi[0]["best"] == multi[1]["best"] and multi[0]["best"]["step"] == ref["best"]["step"]
    for i in range(2):  # fit returns the best dev checkpoint's parameters: the same step in all three.
        diff = max_abs_diff(load_leaves(str(tmp_path / f"two-{i}")), ref_params)
        assert diff < 1e-5, f"process {i}: max |param - reference| = {diff} (moved {moved})"
    for key in ("loss", "ce", "dar", "grad_norm", "accuracy", "examples"):
        for r in multi:
            np.testing.assert_allclose(r["first"][key], ref["first"][key], rtol=1e-5, atol=1e-7, err_msg=key)

    # Only process 0 wrote the run's own files; both took part in the (collective) orbax saves.
    run_dir = tmp_path / "two"
    top = [{w.split(os.sep)[0].removesuffix(".tmp") for w in r["writes"]} for r in multi]  # Atomic writes.
    assert {"config.json", "metrics.jsonl", "summary.json", "model", "tensorboard"} <= top[0], top[0]
    assert top[1] <= {"checkpoints", "best"}, f"process 1 wrote {sorted(multi[1]['writes'])}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, STEPS + 1)), train_steps  # One writer, and no step twice.
    assert json.loads((run_dir / "config.json").read_text())["optim"]["batch_size"] == BATCH

    # Checkpoints at 2, the SIGTERM step, 4 and 6 plus the best dev one; restored here in one process, the last
    # state (parameters and Adam moments) matches the reference run's, and the best is what fit returned.
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2, TERM_AT, 4, STEPS], saved
    state, meta, best, best_meta = restore_last_state(run_dir, model)
    ref_state, _, _, _ = restore_last_state(tmp_path / "one", model)
    assert int(state.step) == STEPS and meta["step"] == STEPS and meta["best"] == multi[0]["best"]
    as_leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    last, ref_last = as_leaves((state.params, state.opt_state)), as_leaves((ref_state.params, ref_state.opt_state))
    assert max_abs_diff(last, ref_last) < 1e-5
    assert best_meta["step"] == multi[0]["best"]["step"]
    assert max_abs_diff(as_leaves(best), load_leaves(str(tmp_path / "two-0"))) == 0.0


@pytest.mark.slow
def test_pmap_backend_averages_over_the_devices_of_every_process(tmp_path):
    """Under pmap too the collectives span both processes: each step sees all 16 rows, the processes agree."""
    model = tiny.make_model_dir(tmp_path / "model", layers=1, hidden=32)
    folder = tiny.make_sentiment_folder(tmp_path / "data", n_train=32, n_dev=16)
    coordinator = f"127.0.0.1:{free_port()}"
    config = {"output_dir": str(tmp_path / "run"), "model.name": str(model)}
    config.update(task="rotten_tomatoes", source=str(folder),
                  batch_size=BATCH, max_steps=2, learning_rate=1e-3, max_length=32, dropout=False, progress=False,
                  log_every=1, backend="pmap", loss=dict(kind="ce"))
    multi = launch([(dict(config=config, process_id=i, num_processes=2, coordinator=coordinator,
                          result=str(tmp_path / f"pmap-{i}"), output_dir=config["output_dir"], term_at=-1,
                          term_process=-1), 2) for i in range(2)])
    for r in multi:
        assert r["runs"] == [{"step": 2, "status": "finished"}] and r["first"]["examples"] == BATCH, r
    # With only its local devices in the pmap, each process would average its own 8 rows and drift apart.
    assert max_abs_diff(load_leaves(str(tmp_path / "pmap-0")), load_leaves(str(tmp_path / "pmap-1"))) == 0.0


def test_finetune_distributed_flags_reach_initialize(monkeypatch):
    """``--coordinator-address/--num-processes/--process-id`` (or bare ``--distributed``) join the run first."""
    from cascade_jax import parallel
    from train import finetune

    calls = []

    class Joined(Exception):
        pass

    def fake(*args, **kwargs):
        calls.append(args)
        raise Joined

    monkeypatch.setattr(parallel, "initialize_distributed", fake)
    with pytest.raises(Joined):
        finetune.main(["--output-dir", "x", "--coordinator-address", "10.0.0.1:1234", "--num-processes", "4",
                       "--process-id", "3"])
    with pytest.raises(Joined):
        finetune.main(["--output-dir", "x", "--distributed"])
    assert calls == [("10.0.0.1:1234", 4, 3), (None, None, None)]
