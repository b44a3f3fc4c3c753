"""Import a BERT encoder exported to ONNX (sentence-transformers style) as a Hugging Face state dict.

The exporter named every bias and LayerNorm initializer after its PyTorch parameter, but left the MatMul weights
unnamed (``onnx::MatMul_470``...). Each MatMul's output feeds exactly one ``Add`` whose other input is a named bias
(``...attention.self.query.bias``); that bias names the weight. ONNX MatMul weights are ``[in, out]`` (``x @ W``);
PyTorch ``Linear.weight`` is ``[out, in]``, so they are transposed.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import numpy as np


def state_dict_from_onnx(onnx_file: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Return ``{hugging-face BertModel parameter name: float32 array}`` for the encoder in ``onnx_file``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    state: dict[str, np.ndarray] = {}
    for name, value in inits.items():
        if not name.startswith("onnx::"):
            state[_hf_name(name)] = value.astype(np.float32)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i in inits and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"{onnx_file}: cannot identify MatMul weight {node.input[1]} (bias candidates {biases})")
        weight_name = _hf_name(biases[0][: -len(".bias")] + ".weight")
        if weight_name in state:
            raise ValueError(f"{onnx_file}: two MatMul weights map to {weight_name}")
        state[weight_name] = np.ascontiguousarray(inits[node.input[1]].T.astype(np.float32))
    return state


def _hf_name(onnx_name: str) -> str:
    # sentence-transformers wraps the BertModel as model.0.auto_model; strip that prefix.
    return re.sub(r"^(model\.)?0\.auto_model\.", "", onnx_name)


def config_from_state_dict(state: dict[str, np.ndarray], num_attention_heads: int) -> dict:
    """A BERT ``config.json`` dict inferred from the parameter shapes; the head count cannot be, so it is given."""
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_hidden_layers": layers,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def write_hf_directory(
    onnx_file: pathlib.Path, out_dir: pathlib.Path, *, num_attention_heads: int, vocab_from: pathlib.Path | None
) -> None:
    """Write ``model.safetensors`` + ``config.json`` (+ tokenizer files copied from ``vocab_from``) to ``out_dir``."""
    from safetensors.numpy import save_file

    state = state_dict_from_onnx(onnx_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config_from_state_dict(state, num_attention_heads), indent=2) + "\n")
    if vocab_from is not None:
        for f in ["vocab.txt", "tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(vocab_from / f, out_dir / f)
