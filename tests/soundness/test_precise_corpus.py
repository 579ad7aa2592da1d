"""The double-double evaluation (analyses.precise) over the operator corpus: at seeded inputs its
outputs and float64's are both within their certified bounds of the exact outputs, so they differ
by at most the sum of the two bounds; where every node is evaluated exactly, its bound is far
below float64's (beyond the rounding of its outputs to float64)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stabaudit.analyses.lower import ForwardErrorModel
from stabaudit.analyses.precise import PreciseModel
from stabaudit.ir import ops as O
from stabaudit.ir.executor import with_shapes
from tests.soundness import harness as H
from tests.soundness.cases import CASES, ONNX, TS, Case

PAIRS = [pytest.param(c, ONNX if ONNX in c.formats else TS, id=c.id) for c in CASES]


@pytest.mark.parametrize(("case", "fmt"), PAIRS)
def test_double_double_and_float64_enclose_the_same_outputs(case: Case, fmt: str, tmp_path: Path) -> None:
    from stabaudit.loaders import load_model

    built = H.build(case, fmt, tmp_path)
    loaded = load_model(built.path, input_shape=built.input_shape)
    graph = with_shapes(loaded.graph)
    shapes = dict(graph.shapes)
    fallback = ForwardErrorModel(graph, shapes)
    precise = PreciseModel(graph, shapes, fallback=fallback)
    assert precise.supported, precise.why
    n = sum(int(np.prod(s.shape)) for s in graph.inputs)
    gen = torch.Generator().manual_seed(7)
    for scale in (1.0, 0.1):
        x = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        y64, e64 = fallback.evaluate(x)
        ydd, edd = precise.evaluate(x)
        if not (np.isfinite(e64) and np.isfinite(edd)):
            continue
        gap = float(np.linalg.norm(ydd - y64))
        assert gap <= (e64 + edd) * (1 + 1e-9) + 1e-300, (gap, e64, edd, precise.failure)
        if not precise.in_float64 and e64 > 0.0:
            # beyond its final rounding to float64 (u ||y||), far below float64's bound
            assert edd <= 1e-6 * e64 + 1.2e-16 * float(np.linalg.norm(ydd)) + 1e-150, (edd, e64)


def test_the_real_network_corpus(external_dir: Path) -> None:
    """The same on every network of ../shared/models/external (real exports: MatMul and Add, NHWC
    inputs with Transpose, Sub/Div normalisation, Dropout): the two evaluations agree within their
    bounds, and the exact ones (piecewise-linear networks) are far tighter than float64."""
    from stabaudit.loaders import load_model

    paths = sorted(external_dir.rglob("*.onnx"))
    assert paths
    exact = 0
    for path in paths:
        try:
            loaded = load_model(path)
        except Exception:  # noqa: BLE001  (a network the loader refuses is not this test's)
            continue
        graph = with_shapes(loaded.graph)
        shapes = dict(graph.shapes)
        fallback = ForwardErrorModel(graph, shapes)
        precise = PreciseModel(graph, shapes, fallback=fallback)
        n = sum(int(np.prod(s.shape)) for s in graph.inputs)
        x = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        y64, e64 = fallback.evaluate(x)
        ydd, edd = precise.evaluate(x)
        assert np.isfinite(edd), (path.name, precise.failure)
        if np.isfinite(e64):
            assert float(np.linalg.norm(ydd - y64)) <= (e64 + edd) * (1 + 1e-9) + 1e-300, path.name
        if not precise.in_float64:
            exact += 1
            # piecewise-linear networks: some 2^-50 of float64's bound; with Sigmoid or Tanh layers
            # (in limbs too, their slicing of each layer's input to about 84 bits) 1e-4 of it
            smooth = any(isinstance(node.op, O.Sigmoid | O.Tanh | O.Silu) for node in graph.nodes)
            assert edd <= (1e-4 if smooth else 1e-6) * e64 + 1.2e-16 * float(np.linalg.norm(ydd)) + 1e-150, path.name
    assert exact >= 10  # ACAS Xu, the ReLU MLPs, the CIFAR ResNets and CNNs
