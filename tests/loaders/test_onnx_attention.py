"""ONNX's own Attention operator (opset 23 on: torch's exporter writes it for
scaled_dot_product_attention): it loads onto the IR ops it fuses and matches onnxruntime on the
file, with grouped-query heads, masks, causal and padded keys, softcap; caches are refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

from stabaudit.errors import UnsupportedOperatorError
from stabaudit.ir import ops as O
from stabaudit.loaders.base import LoadedModel
from stabaudit.loaders.onnx import load_onnx
from tests.loaders.support import check_onnx, needs_a_domain, save_onnx

B, S, WIDTH = 2, 4, 16  # 4 query heads of 4, 2 key/value heads of 4 (grouped) from 16 input features
RNG = np.random.default_rng(0)
W = {name: (RNG.normal(size=(WIDTH, cols)) / 3).astype(np.float32) for name, cols in (("wq", 16), ("wk", 8), ("wv", 8))}


def save(tmp_path: Path, attention: Any, extra: dict[str, np.ndarray] | None = None, *, opset: int = 23,
         outputs: Sequence[str] = ("y",), heads: bool = True) -> Path:
    """x [B, S, 16] -> q, k, v by three MatMuls (3-D, or split into heads by Reshape/Transpose when
    ``heads`` is False, as torch writes them) -> ``attention`` -> ``outputs``."""
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in ("wq", "wk", "wv")]
    inits = {**W, **(extra or {})}
    if not heads:
        for name, count in (("q", 4), ("k", 2), ("v", 2)):
            inits[f"{name}_shape"] = np.array([B, S, count, 4], np.int64)
            nodes += [helper.make_node("Reshape", [name, f"{name}_shape"], [f"{name}_split"]),
                      helper.make_node("Transpose", [f"{name}_split"], [f"{name}4"], perm=[0, 2, 1, 3])]
    nodes.append(attention)
    return save_onnx(tmp_path, nodes, inits, (B, S, WIDTH), opset=opset, outputs=outputs, ir_version=10)


def check(path: Path, tol: float = 2e-5) -> LoadedModel:
    return check_onnx(path, (B, S, WIDTH), tol=tol)


def attention(inputs: Sequence[str] = ("q", "k", "v"), outputs: Sequence[str] = ("y",), **attrs: Any) -> Any:
    if len(inputs) >= 3 and inputs[0] == "q":
        attrs = {"q_num_heads": 4, "kv_num_heads": 2, **attrs}
    return helper.make_node("Attention", list(inputs), list(outputs), **attrs)


BOOL_MASK = np.ones((S, S), bool)
BOOL_MASK[:, 3] = False
LEFT_PADDED = np.ones((B, 1, S, S), bool)
LEFT_PADDED[1, :, :, :2] = False  # the second sequence's first two keys are padding
LEFT_PADDED[1, :, :2, :] = False  # ... and so are its first two queries: they read no key, output 0
FLOAT_MASK = RNG.normal(size=(S, S)).astype(np.float32)
FLOAT_MASK[0, 1:] = -np.inf


@pytest.mark.parametrize(("inputs", "extra", "attrs"), [
    (("q", "k", "v"), {}, {}),
    (("q", "k", "v"), {}, {"is_causal": 1}),
    (("q", "k", "v"), {}, {"scale": 0.25, "softcap": 2.0}),
    (("q", "k", "v", "mask"), {"mask": BOOL_MASK}, {}),
    (("q", "k", "v", "mask"), {"mask": LEFT_PADDED}, {"is_causal": 1}),
    (("q", "k", "v", "mask"), {"mask": FLOAT_MASK}, {}),
])
def test_attention_matches_onnxruntime(tmp_path: Path, inputs: Sequence[str], extra: dict[str, np.ndarray],
                                       attrs: dict[str, Any]) -> None:
    """3-D q, k, v with 4 query heads reading 2 key/value heads; masks as the operator applies them
    (bool: False drops the key; float: added, -inf drops it;
    a query that reads no key outputs 0)."""
    lm = check(save(tmp_path, attention(inputs, **attrs), extra))
    names = [type(n.op).__name__ for n in lm.graph.nodes]
    assert names.count("MatMul") == 2 and names.count("Softmax") == 1
    assert [n.op.indices.tolist() for n in lm.graph.nodes if isinstance(n.op, O.Gather)] == [[0, 0, 1, 1]] * 2
    (soft,) = [n.op for n in lm.graph.nodes if isinstance(n.op, O.Softmax)]
    assert (soft.mask is None) == (not attrs.get("is_causal") and "mask" not in extra)
    if "softcap" in attrs:
        assert "Tanh" in names


def test_four_dimensional_heads_as_torch_writes_them(tmp_path: Path) -> None:
    """[B, H, S, d] inputs (no head attributes), the output [B, Hq, S, d]."""
    lm = check(save(tmp_path, attention(["q4", "k4", "v4"], is_causal=1), heads=False))
    assert lm.graph.shapes[lm.graph.outputs[0]] == (B, 4, S, 4)


def test_padded_keys_by_length(tmp_path: Path) -> None:
    """opset 24's nonpad_kv_seqlen: keys at or past each sequence's length are dropped, and the
    causal mask is aligned to each sequence's last key."""
    extra = {"lengths": np.array([4, 3], np.int64)}
    check(save(tmp_path, attention(["q", "k", "v", "", "", "", "lengths"], is_causal=1), extra, opset=24))


def test_present_key_and_value_are_the_keys_and_values_by_heads(tmp_path: Path) -> None:
    lm = check(save(tmp_path, attention(outputs=["y", "pk", "pv"]), outputs=("y", "pk", "pv")))
    assert [lm.graph.shapes[o] for o in lm.graph.outputs] == [(B, S, WIDTH), (B, 2, S, 4), (B, 2, S, 4)]


@pytest.mark.parametrize(("inputs", "outputs", "extra", "match"), [
    (["q", "k", "v", "", "pk", "pv"], ["y"], {"pk": np.zeros((B, 2, 1, 4), np.float32),
                                             "pv": np.zeros((B, 2, 1, 4), np.float32)}, "cache"),
    (["q", "k", "v"], ["y", "", "", "qk"], {}, "qk_matmul_output"),
    (["q", "kc", "v"], ["y"], {"kc": np.ones((B, S, 8), np.float32)}, "constant"),
])
def test_refusals(tmp_path: Path, inputs: list[str], outputs: list[str], extra: dict[str, np.ndarray],
                  match: str) -> None:
    """A key/value cache, the scores output read, and a constant key are refused by name."""
    path = save(tmp_path, attention(inputs, outputs), extra, outputs=[o for o in outputs if o])
    with pytest.raises(UnsupportedOperatorError, match=match):
        load_onnx(path)


def test_certified_bound_over_a_domain(tmp_path: Path) -> None:
    """q k^T has no global constant: the notes name it; over a box, a certified bound at least
    the lower end."""
    path = save(tmp_path, attention(["q", "k", "v", "mask"], is_causal=1), {"mask": LEFT_PADDED})
    needs_a_domain(path, tmp_path, "MatMul")
