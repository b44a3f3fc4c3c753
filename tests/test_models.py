"""The Flax BERT against PyTorch transformers (and onnxruntime for the ONNX-imported minilm-l3)."""

import json
import shutil

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cascade_jax import assets, dense, models

TOL = 1e-4  # float32 absolute tolerance on every hidden state, pooled output and logit.

SENTENCES = [
    "A gripping, beautifully acted film that never lets go.",
    "Dull.",
    "The plot is thin and the jokes fall flat, but the score is lovely.",
]
PAIRS = (["Is the movie worth watching?", "Who directed it?", "Two men walk into a bar."],
         ["Yes, it is a remarkable achievement.", "Nobody knows.", "A bar is entered by two men."])


def _torch_inputs(enc):
    return {k: torch.tensor(np.asarray(v)) for k, v in enc.items()}


def _ours(module, params, enc, **kw):
    return module.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], **kw)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b.detach().numpy().astype(np.float64))))


def _assert_states_close(ours, theirs):
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert _max_diff(a, b) < TOL, f"hidden state {i} differs by {_max_diff(a, b)}"


def _encodings(tokenizer):
    single = tokenizer(SENTENCES, padding=True, return_tensors="np")
    pair = tokenizer(*PAIRS, padding=True, return_tensors="np")
    assert single["attention_mask"].min() == 0 and pair["attention_mask"].min() == 0  # Padding is exercised.
    assert pair["token_type_ids"].max() == 1
    return [single, pair]


@pytest.mark.real
@pytest.mark.parametrize("name", models.BUILTIN_MODELS)
def test_real_weights_match_pytorch_bert(name):
    module, params = models.from_pretrained(name, num_labels=2)
    torch_model = transformers.BertModel.from_pretrained(str(models.resolve_model_dir(name))).eval()
    for enc in _encodings(models.tokenizer_for(name)):
        ours = _ours(module, params, enc, output_hidden_states=True)
        with torch.no_grad():
            theirs = torch_model(**_torch_inputs(enc), output_hidden_states=True)
        _assert_states_close(ours, theirs)
        if name == "minilm-l6":  # minilm-l3 ships no pooler: both sides would be random (checked in round trip).
            assert _max_diff(ours.pooled_output, theirs.pooler_output) < TOL


@pytest.mark.real
def test_minilm_l3_matches_onnxruntime_on_its_own_file():
    import onnxruntime

    module, params = models.from_pretrained("minilm-l3", num_labels=2)
    session = onnxruntime.InferenceSession(str(assets.path("minilm-l3") / "model.onnx"))
    # The export takes no token_type_ids (always segment 0), so compare on single sentences.
    enc = models.tokenizer_for("minilm-l3")(SENTENCES, padding=True, return_tensors="np")
    (last,) = session.run(["onnx::Shape_422"], {"input_ids": enc["input_ids"].astype(np.int64),
                                                "attention_mask": enc["attention_mask"].astype(np.int64)})
    ours = _ours(module, params, enc)
    assert np.max(np.abs(np.asarray(ours.last_hidden_state) - last)) < TOL


@pytest.mark.real
def test_builtin_models_share_one_vocabulary():
    t3, t6 = models.tokenizer_for("minilm-l3"), models.tokenizer_for("minilm-l6")
    assert t3.get_vocab() == t6.get_vocab()
    ids = t6("Hello World!")["input_ids"]
    assert ids == [101, 7592, 2088, 999, 102]  # Lower-cased WordPiece ids, not [UNK] (transformers 5 pitfall).


TINY_CONFIGS = [
    dict(hidden_size=32, num_attention_heads=4, intermediate_size=37, num_hidden_layers=1),
    dict(hidden_size=36, num_attention_heads=3, intermediate_size=50, num_hidden_layers=2, type_vocab_size=3),
    dict(hidden_size=48, num_attention_heads=6, intermediate_size=64, num_hidden_layers=3, layer_norm_eps=1e-5,
         num_labels=3),
]


def _tiny_torch_checkpoint(tmp_path, seed, **overrides):
    cfg = dict(vocab_size=97, max_position_embeddings=40, hidden_act="gelu", num_labels=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg)).eval()
    with torch.no_grad():  # Non-trivial LayerNorm and bias values, so a swapped name cannot pass by accident.
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model, cfg


def _random_batch(rng, batch, length, vocab, type_vocab=2):
    ids = rng.integers(1, vocab, size=(batch, length))
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, type_vocab, size=(batch, length)) * mask
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize("index", range(len(TINY_CONFIGS)))
def test_random_tiny_configs_match_pytorch(tmp_path, index):
    overrides = TINY_CONFIGS[index]
    torch_model, cfg = _tiny_torch_checkpoint(tmp_path, seed=index, **overrides)
    module, params = models.from_pretrained(tmp_path, num_labels=cfg["num_labels"])
    enc = _random_batch(np.random.default_rng(index), 5, 11, cfg["vocab_size"], cfg.get("type_vocab_size", 2))
    ours = _ours(module, params, enc, output_hidden_states=True)
    with torch.no_grad():
        theirs = torch_model(**_torch_inputs(enc), output_hidden_states=True)
    _assert_states_close(ours, theirs)
    assert _max_diff(ours.logits, theirs.logits) < TOL
    assert ours.logits.dtype == jnp.float32


@pytest.mark.parametrize("k", [1, 2])
def test_truncation_to_k_layers_matches_pytorch(tmp_path, k):
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=7, **TINY_CONFIGS[2])
    module, params = models.from_pretrained(tmp_path, num_labels=cfg["num_labels"], num_layers=k)
    assert module.config.num_hidden_layers == k
    assert sorted(params["bert"]["encoder"]) == [f"layer_{i}" for i in range(k)]
    truncated = transformers.BertForSequenceClassification.from_pretrained(tmp_path, num_hidden_layers=k).eval()
    enc = _random_batch(np.random.default_rng(k), 4, 9, cfg["vocab_size"])
    ours = _ours(module, params, enc, output_hidden_states=True)
    with torch.no_grad():
        theirs = truncated(**_torch_inputs(enc), output_hidden_states=True)
    _assert_states_close(ours, theirs)
    assert _max_diff(ours.logits, theirs.logits) < TOL


@pytest.mark.real
def test_save_pretrained_round_trip_through_pytorch(tmp_path):
    # minilm-l3 with a fresh pooler and classifier: everything we save must come back in PyTorch.
    module, params = models.from_pretrained("minilm-l3", num_labels=3, seed=1)
    models.save_pretrained(module, params, tmp_path, tokenizer=models.tokenizer_for("minilm-l3"))
    torch_model = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch_model.config.num_labels == 3
    for enc in _encodings(transformers.AutoTokenizer.from_pretrained(tmp_path)):
        ours = _ours(module, params, enc, output_hidden_states=True)
        with torch.no_grad():
            theirs = torch_model(**_torch_inputs(enc), output_hidden_states=True)
        _assert_states_close(ours, theirs)
        assert _max_diff(ours.logits, theirs.logits) < TOL
    # And back into JAX: the same parameters bit for bit.
    _, again = models.from_pretrained(tmp_path, num_labels=3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)


def test_bfloat16_compute_is_close_to_float32(tmp_path):
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=3, **TINY_CONFIGS[1])
    m32, params = models.from_pretrained(tmp_path, num_labels=2)
    m16, params16 = models.from_pretrained(tmp_path, num_labels=2, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params16))
    enc = _random_batch(np.random.default_rng(0), 6, 12, cfg["vocab_size"], 3)
    a, b = _ours(m32, params, enc), _ours(m16, params16, enc)
    assert b.last_hidden_state.dtype == jnp.bfloat16 and b.logits.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(a.last_hidden_state)))
    err = float(jnp.max(jnp.abs(a.last_hidden_state - b.last_hidden_state.astype(jnp.float32))))
    assert 0 < err < 0.05 * scale  # Different (bf16 rounding) but close.
    assert float(jnp.max(jnp.abs(a.logits - b.logits))) < 0.05


def _dot_dtypes(fn, *args) -> list[tuple[tuple[str, ...], str]]:
    """(operand dtypes, result dtype) of every dot_general in ``fn``'s jaxpr, nested calls included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bfloat16_matmuls_take_bf16_operands_and_accumulate_in_float32(tmp_path):
    # The bf16 path's speed on CPU rests on this form (bf16 x bf16 -> f32: XLA:CPU's YNNPACK bf16 kernels); a
    # bf16 -> bf16 dot would be upcast to float32 by XLA first. float32 models keep float32 dots.
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=5, **TINY_CONFIGS[1])
    enc = _random_batch(np.random.default_rng(1), 4, 10, cfg["vocab_size"], 3)
    batch = {k: jnp.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for dtype, operands, result in ((jnp.bfloat16, "bfloat16", "float32"), (jnp.float32, "float32", "float32")):
        module, params = models.from_pretrained(tmp_path, num_labels=2, dtype=dtype)
        dots = _dot_dtypes(models.logits_fn(module), models.cast_params(params, dtype), batch)
        # Per layer: q, k, v, attention output, intermediate, output dense and the two attention einsums.
        assert len(dots) >= 8 * cfg["num_hidden_layers"]
        assert all(ops == (operands, operands) and out == result for ops, out in dots), dots


def test_dropout_is_active_only_when_not_deterministic(tmp_path):
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=4, **TINY_CONFIGS[0])
    module, params = models.from_pretrained(tmp_path, num_labels=2)
    enc = _random_batch(np.random.default_rng(1), 3, 7, cfg["vocab_size"])
    a = _ours(module, params, enc, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}).logits
    b = _ours(module, params, enc, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}).logits
    c = _ours(module, params, enc).logits
    assert not np.allclose(a, b) and np.allclose(c, _ours(module, params, enc).logits)


def test_fully_masked_padding_row_stays_finite(tmp_path):
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=5, **TINY_CONFIGS[0])
    module, params = models.from_pretrained(tmp_path, num_labels=2)
    enc = _random_batch(np.random.default_rng(2), 3, 6, cfg["vocab_size"])
    enc["attention_mask"][1] = 0
    assert np.isfinite(np.asarray(_ours(module, params, enc).logits)).all()


def test_logits_fn_is_a_pure_function_of_params_and_batch(tmp_path):
    _, cfg = _tiny_torch_checkpoint(tmp_path, seed=6, **TINY_CONFIGS[0])
    module, params = models.from_pretrained(tmp_path, num_labels=2)
    enc = _random_batch(np.random.default_rng(3), 4, 5, cfg["vocab_size"])
    fn = jax.jit(models.logits_fn(module))
    np.testing.assert_allclose(fn(params, enc), _ours(module, params, enc).logits, atol=1e-6)
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x]), params)  # vmap over "seeds".
    out = jax.vmap(fn, in_axes=(0, None))(stacked, enc)
    np.testing.assert_allclose(out[0], fn(params, enc), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Errors.


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory at .*nope"):
        models.from_pretrained(tmp_path / "nope", num_labels=2)


def test_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="has no weights"):
        models.from_pretrained(tmp_path, num_labels=2)


def test_shapes_that_do_not_match_the_config_are_a_clear_error(tmp_path):
    _tiny_torch_checkpoint(tmp_path, seed=0, **TINY_CONFIGS[0])
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.ModelLoadError, match=r"intermediate\.dense\.\w+. has shape \(37.*asks for \(40"):
        models.from_pretrained(tmp_path, num_labels=2)


def test_classifier_with_other_num_labels_is_a_clear_error(tmp_path):
    _tiny_torch_checkpoint(tmp_path, seed=0, **TINY_CONFIGS[0])
    with pytest.raises(models.ModelLoadError, match=r"classifier\.\w+. has shape \(2.*asks for \(5"):
        models.from_pretrained(tmp_path, num_labels=5)


def test_num_layers_larger_than_the_checkpoint_is_a_clear_error(tmp_path):
    _tiny_torch_checkpoint(tmp_path, seed=0, **TINY_CONFIGS[1])
    with pytest.raises(models.ModelLoadError, match="num_layers=3, but .* has 2 layers"):
        models.from_pretrained(tmp_path, num_labels=2, num_layers=3)


def test_checkpoint_missing_encoder_weights_is_a_clear_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    _tiny_torch_checkpoint(tmp_path, seed=0, **TINY_CONFIGS[0])
    state = load_file(tmp_path / "model.safetensors")
    del state["bert.encoder.layer.0.output.dense.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(models.ModelLoadError, match="missing encoder parameters"):
        models.from_pretrained(tmp_path, num_labels=2)


def test_offline_hub_id_fails_at_once_naming_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'some-org/some-bert'.*local directory"):
        models.from_pretrained("some-org/some-bert", num_labels=2)


def test_missing_builtin_asset_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_JAX_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetMissingError, match="python -m cascade_jax.assets install minilm-l6"):
        models.from_pretrained("minilm-l6", num_labels=2)


def test_pytorch_bin_checkpoints_load_too(tmp_path):
    torch_model, cfg = _tiny_torch_checkpoint(tmp_path / "st", seed=2, **TINY_CONFIGS[0])
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "st" / "config.json", tmp_path / "bin" / "config.json")
    torch.save(torch_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _, a = models.from_pretrained(tmp_path / "st", num_labels=2)
    _, b = models.from_pretrained(tmp_path / "bin", num_labels=2)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_gelu_exact_matches_float64_erf():
    """The float32 erf form against scipy's erf in float64, over the range BERT's activations reach and beyond;
    bfloat16 keeps jax.nn.gelu."""
    from scipy.special import erf

    x = np.concatenate([np.linspace(-12, 12, 20001), np.random.default_rng(0).standard_normal(5000) * 3])
    x = x.astype(np.float32)
    want = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    got = np.asarray(jax.jit(dense.gelu_exact)(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)
    xb = jnp.asarray(x[:1000], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(dense.gelu_exact(xb), np.float32),
                                  np.asarray(jax.nn.gelu(xb, approximate=False), np.float32))
