"""ONNX's own backend conformance cases, run through the loader and the engine's executor.

Node cases come from the onnx package itself (``onnx.backend.test.case.node``, the generators of
``data/node``; read from ``data/node`` when a wheel ships it), pytorch-converted and
pytorch-operator cases from the data shipped in the wheel. A case is run when its first input is
a float tensor (the engine's domain) and every operator in it is one the loader translates or
can fold. The loader gets the model as given; when it refuses it (weights arrive as graph
inputs, which are variables), it gets the model again with every input but the first frozen into
initializers holding the case's stored values. Cases it still refuses are skipped with the
reason, except those named in EXPECTED_TO_PASS and not in KNOWN_REFUSED: there a refusal means
support regressed, and the test fails.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from stabaudit.errors import ModelLoadError
from stabaudit.ir.executor import Executor
from stabaudit.loaders.onnx import load_onnx
from stabaudit.loaders.onnx_ops import FOLDERS, TRANSLATORS
from stabaudit.loaders.onnx_ops.common import FLOAT_TYPES
from stabaudit.loaders.onnx_ops.folding import SHAPE_OR_TYPE_INPUTS

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
KNOWN_OPS = set(TRANSLATORS) | set(FOLDERS) | {"Constant"}

# Case-name prefixes that must load and match: a refusal fails the test instead of skipping it,
# unless the case is one of KNOWN_REFUSED (regular expressions, with the reason).
EXPECTED_TO_PASS: tuple[str, ...] = (
    "pytorch-converted/test_AvgPool", "pytorch-converted/test_BatchNorm", "pytorch-converted/test_ConstantPad2d",
    "pytorch-converted/test_Conv", "pytorch-converted/test_ELU", "pytorch-converted/test_LeakyReLU",
    "pytorch-converted/test_Linear", "pytorch-converted/test_MaxPool", "pytorch-converted/test_PReLU",
    "pytorch-converted/test_PixelShuffle", "pytorch-converted/test_ReLU", "pytorch-converted/test_LogSoftmax",
    "pytorch-converted/test_log_softmax", "pytorch-converted/test_SELU", "pytorch-operator/test_operator_selu", "pytorch-converted/test_Sigmoid",
    "pytorch-converted/test_Softm", "pytorch-converted/test_Softplus", "pytorch-converted/test_Tanh",
    "pytorch-converted/test_ZeroPad2d", "pytorch-converted/test_softmax",
    "pytorch-operator/test_operator_add", "pytorch-operator/test_operator_clip", "pytorch-operator/test_operator_concat",
    "pytorch-operator/test_operator_conv", "pytorch-operator/test_operator_flatten",
    "pytorch-operator/test_operator_maxpool", "pytorch-operator/test_operator_mm", "pytorch-operator/test_operator_permute",
    "pytorch-operator/test_operator_symbolic_override_nested", "pytorch-operator/test_operator_view",
    "test_rms_normalization", "test_attention", "test_cumsum", "test_gather_elements", "test_gathernd_example_float32",
    "test_dft", "test_stft", "test_sin_example", "test_cos_example",
    "test_abs", "test_add", "test_averagepool", "test_basic_conv", "test_batchnorm", "test_cast_", "test_castlike_", "test_celu",
    "test_clip", "test_concat", "test_constant_pad", "test_conv_with", "test_convtranspose", "test_depthtospace",
    "test_div", "test_dropout", "test_dynamicquantizelinear", "test_elu", "test_expand", "test_flatten", "test_gather_0", "test_gather_1",
    "test_gather_negative_indices", "test_gelu", "test_gemm", "test_globalaveragepool",
    "test_globalmaxpool", "test_gru", "test_hardsigmoid", "test_hardswish", "test_identity", "test_leakyrelu", "test_lstm", "test_matmul",
    "test_max_", "test_maxpool", "test_min_", "test_mul", "test_neg", "test_prelu", "test_reduce_l1", "test_reduce_l2",
    "test_reduce_log_sum_exp", "test_reduce_max", "test_reduce_mean", "test_reduce_min", "test_reduce_sum_",
    "test_quantizelinear", "test_relu", "test_reshape", "test_resize", "test_rnn_seq_length", "test_sigmoid", "test_simple_rnn", "test_softmax",
    "test_softplus", "test_spacetodepth", "test_split", "test_squeeze", "test_sub", "test_sum", "test_swiglu", "test_swish",
    "test_tanh", "test_thresholdedrelu_expanded", "test_tile", "test_transpose", "test_unsqueeze", "test_upsample",
    "test_erf", "test_exp_example", "test_log_example", "test_pow", "test_reciprocal", "test_sqrt",
    "test_selu", "test_logsoftmax", "test_instancenorm", "test_group_normalization", "test_einsum", "test_mish",
)
KNOWN_REFUSED: dict[str, str] = {
    r"test_attention_.*with_past": "Attention with a key/value cache (decoding)",
    r"test_attention_.*(qk_matmul|local_window_gqa_rank4_mask)": "Attention's qk_matmul_output read",
    r"pytorch-converted/test_PReLU_\dd_multiparam": "opset-6 PRelu with a per-channel 1-D slope",
    r"pytorch-operator/test_operator_addmm": "Gemm with a variable bias",
    r"test_averagepool_.*dilations": "the executor's AveragePool has no dilations",
    r"test_averagepool_2d_ceil_last_window_starts_on_pad": "ceil-mode window starting in the padding",
    r"test_batchnorm_.*training_mode": "BatchNormalization in training mode",
    r"test_cast(like)?_.*_to_(FLOAT[48]|INT|UINT)": "casts to integers and 8-/4-bit floats",
    r"test_dropout_default_mask": "Dropout's mask output is used",
    r"test_einsum_batch_diagonal": "Einsum with a repeated letter in one operand (a diagonal)",
    r"test_gelu_tanh_.*expanded": "tanh GELU written with Pow and Tanh",
    r"test_maxpool_with_argmax": "MaxPool's indices output is used",
    r"test_pow(_bcast_array|_example|_types_.*)?$": "Pow with a variable or per-entry exponent",
    r"test_reduce_(l2|log_sum_exp)_.*expanded": "expansions with Sqrt, Exp and Log",
    r"test_reduce_.*empty_set": "zero-size dims",
    r"test_reduce_l1_.*expanded": "expansions with Abs",
    r"test_dynamicquantizelinear.*_expanded": "the expansion's Round of a computed step (the operator itself loads)",
    r"test_quantizelinear_(blocked|e4m3fn|e5m2|float4e2m1)": "blocked quantization, float8 and float4 outputs",
    r"test_reshape_allowzero": "zero-size dims",
    r"test_resize_downsample_scales_(cubic|linear)_align_corners":
        "align_corners with scale x length no whole number (the reference and onnxruntime differ)",
    r"test_split_zero_size_splits": "zero-size dims",
    r"test_swiglu(_alpha|_float16)?$|test_swiglu_alpha_expanded": "SwiGLU, Swish with alpha != 1",
    r"test_swish_expanded": "Swish written with Mul(alpha, x)",
}


@dataclass(frozen=True)
class Case:
    name: str
    model: Any  # onnx.ModelProto
    data_sets: tuple[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], ...]


def _array(value: Any) -> np.ndarray | None:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.ndarray | np.generic) else None


def _read_dir(directory: Path, name: str) -> Case:
    model = onnx.load(directory / "model.onnx")
    sets = []
    for data_set in sorted(directory.glob("test_data_set_*")):
        def read(kind: str, data_set: Path = data_set) -> tuple[np.ndarray, ...]:
            files = sorted(data_set.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
            return tuple(numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files)

        sets.append((read("input"), read("output")))
    return Case(name=name, model=model, data_sets=tuple(sets))


def _node_cases() -> list[Case]:
    node_dir = DATA / "node"
    if node_dir.is_dir():
        return [_read_dir(d, d.name) for d in sorted(node_dir.iterdir()) if (d / "model.onnx").is_file()]
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        generated = collect_testcases()
    cases = []
    for case in generated:
        sets = []
        for inputs, outputs in case.data_sets or ():
            ins, outs = [_array(v) for v in inputs], [_array(v) for v in outputs]
            if all(v is not None for v in ins + outs):
                sets.append((tuple(ins), tuple(outs)))
        if sets and case.model is not None:
            cases.append(Case(name=case.name, model=case.model, data_sets=tuple(sets)))  # type: ignore[arg-type]
    return cases


def _within_reach(model: Any) -> bool:
    """Every node has an op the loader knows or reads only constants (folded at load time)."""
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        free = SHAPE_OR_TYPE_INPUTS.get(node.op_type, ())
        by_value = [name for i, name in enumerate(node.input) if name and i not in free]
        folded = node.op_type == "Constant" or bool(by_value) and all(i in constant for i in by_value)
        if node.domain not in ("", "ai.onnx") or not (folded or node.op_type in KNOWN_OPS):
            return False
        if folded:
            constant.update(node.output)
    return True


def _float_input(model: Any) -> bool:
    """Whether the first input is a float tensor: the engine's domain (integer cases are outside)."""
    first = model.graph.input[0].type.tensor_type.elem_type if model.graph.input else 0
    return first in FLOAT_TYPES


@functools.cache
def cases() -> dict[str, Case]:
    found = _node_cases()
    for folder in ("pytorch-converted", "pytorch-operator"):
        found += [_read_dir(d, f"{folder}/{d.name}") for d in sorted((DATA / folder).glob("*/"))
                  if (d / "model.onnx").is_file()]
    return {c.name: c for c in sorted(found, key=lambda c: c.name)
            if _float_input(c.model) and (c.name.startswith(EXPECTED_TO_PASS) or _within_reach(c.model))}


def _is_float(value: np.ndarray) -> bool:
    return np.asarray(value).dtype.kind in "fc" or np.asarray(value).dtype.name == "bfloat16"


def _frozen(model: Any, inputs: Sequence[np.ndarray], *, only_non_float: bool = False) -> Any:
    """The model with every graph input after the first (``only_non_float``: every bool or integer
    input, masks and lengths) turned into an initializer."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    graph = frozen.graph
    real = [vi.name for vi in graph.input if vi.name not in {t.name for t in graph.initializer}]
    fixed = {i for i in range(1, min(len(real), len(inputs)))
             if not only_non_float or not _is_float(inputs[i])}
    for i in sorted(fixed):
        graph.initializer.append(numpy_helper.from_array(inputs[i], real[i]))
    keep = [vi for vi in graph.input if vi.name not in {real[i] for i in fixed}]
    del graph.input[:]
    graph.input.extend(keep)
    return frozen


def _tolerance(outputs: Sequence[np.ndarray]) -> tuple[float, float]:
    """Stored outputs in half precision were rounded to it; the engine computes in float64."""
    names = {o.dtype.name for o in outputs}
    if "bfloat16" in names:
        return 3e-2, 3e-2
    if "float16" in names:
        return 4e-3, 4e-3
    return 1e-4, 1e-5


def _known_refusal(name: str) -> bool:
    return any(re.match(pattern, name) for pattern in KNOWN_REFUSED)


def test_expectations_name_existing_cases() -> None:
    """Every expected prefix and known refusal names cases, so the lists cannot go stale."""
    names = list(cases())
    assert [p for p in EXPECTED_TO_PASS if not any(n.startswith(p) for n in names)] == []
    assert [p for p in KNOWN_REFUSED if not any(re.match(p, n) for n in names)] == []


@pytest.mark.parametrize("name", sorted(cases()))
def test_backend_case(tmp_path: Path, name: str) -> None:
    case = cases()[name]
    inputs, outputs = case.data_sets[0]
    variants = [("as given", case.model)]
    if len(inputs) > 1:
        variants.append(("frozen", _frozen(case.model, inputs)))
        if not all(_is_float(x) for x in inputs[1:]):
            # integer and bool inputs would be held at seeded values, not the data set's: freeze
            # them first (the float ones stay inputs), then all
            variants = [("non-float frozen", _frozen(case.model, inputs, only_non_float=True)), *variants[::-1]]
    refusals = []
    for variant, model in variants:
        path = tmp_path / "model.onnx"
        onnx.save(model, path)
        try:
            loaded = load_onnx(path)
            break
        except ModelLoadError as exc:
            refusals.append(f"{variant}: {exc}")
    else:
        if name.startswith(EXPECTED_TO_PASS) and not _known_refusal(name):
            pytest.fail(f"expected to load: {'; '.join(refusals)}")
        pytest.skip("; ".join(refusals))
    executor = Executor(loaded.graph, dtype=torch.float64)
    names = [vi.name for vi in case.model.graph.input if vi.name not in {t.name for t in case.model.graph.initializer}]
    for set_inputs, set_outputs in case.data_sets:
        # the inputs the loaded graph still reads: frozen and held ones dropped
        feeds = [x for name, x in zip(names, set_inputs, strict=False) if name in loaded.graph.input_names]
        ours = executor(*[torch.from_numpy(np.array(x, dtype=np.float64)) for x in feeds])
        rtol, atol = _tolerance(set_outputs)
        assert len(ours) == len(set_outputs)
        for got, want in zip(ours, set_outputs, strict=True):
            assert tuple(got.shape) == want.shape
            np.testing.assert_allclose(got.numpy(), want.astype(np.float64), rtol=rtol, atol=atol)
