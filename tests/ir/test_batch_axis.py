"""ir.batch_axis: the proof that a graph keeps samples apart, on hand-built graph pairs (batch 1 and 2)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.batch_axis import batch_mixing
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec

Build = Callable[[int], Graph]
RNG = np.random.default_rng(0)
W = RNG.standard_normal((5, 4))
K = RNG.standard_normal((2, 3, 3, 3))


def _graph(shape: tuple[int, ...], *ops: tuple[O.Op, tuple[str, ...]]) -> Graph:
    """A chain: node i reads the named values ("x" or "v<j>") and writes v<i>."""
    nodes = [Node(name=f"n{i}", op=op, inputs=inputs, output=f"v{i}") for i, (op, inputs) in enumerate(ops)]
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=(f"v{len(ops) - 1}",),
                             nodes=tuple(nodes)).validate())


def _per_sample(build: Build, batch_axis_out: int) -> None:
    """At batch 3 the graph is the batch-1 graph applied to each sample (numerically, float64)."""
    big, one = build(3), build(1)
    shape = big.inputs[0].shape
    x = torch.from_numpy(RNG.standard_normal(shape))
    out = Executor(big, dtype=torch.float64)(x)[0]
    for i in range(3):
        alone = Executor(one, dtype=torch.float64)(x.narrow(0, i, 1))[0]
        torch.testing.assert_close(out.narrow(batch_axis_out, i, 1), alone, rtol=1e-12, atol=1e-12)


KEEP: dict[str, tuple[Build, int]] = {
    "elementwise-affine-linear": (lambda n: _graph(
        (n, 4), (O.Relu(), ("x",)), (O.Affine(scale=np.arange(4.0) + 1, shift=np.ones((1, 4))), ("v0",)),
        (O.Linear(weight=W), ("v1",)), (O.Softmax(axis=-1), ("v2",))), 0),
    "conv-pool-flatten": (lambda n: _graph(
        (n, 3, 4, 4), (O.Conv(weight=K, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1)), ("x",)),
        (O.MaxPool(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1)), ("v0",)),
        (O.Reshape(shape=(n, 8)), ("v1",))), 0),
    "transpose-batch-inward": (lambda n: _graph(
        (n, 4), (O.Transpose(perm=(1, 0)), ("x",)), (O.Reshape(shape=(4, n, 1)), ("v0",)),
        (O.Transpose(perm=(1, 2, 0)), ("v1",)), (O.Linear(weight=W), ("v2",))), 0),
    "branches-add-concat": (lambda n: _graph(
        (n, 4), (O.Tanh(), ("x",)), (O.Linear(weight=W), ("x",)), (O.Linear(weight=W), ("v0",)),
        (O.Add(), ("v1", "v2")), (O.Concat(axis=1), ("v3", "v1")), (O.Pad(pads=(0, 1, 0, 2)), ("v4",))), 0),
    "split-gather-tile-batch-inward": (lambda n: _graph(
        (n, 4), (O.Transpose(perm=(1, 0)), ("x",)), (O.Slice(starts=(1, 0), ends=(4, n), steps=(1, 1)), ("v0",)),
        (O.Gather(axis=0, indices=np.array([[2, 0], [2, 1]])), ("v1",)), (O.Abs(), ("v2",)),
        (O.Tile(repeats=(2, 1, 1)), ("v3",)), (O.Mul(), ("v4", "v4")), (O.Transpose(perm=(2, 0, 1)), ("v5",))), 0),
    # a transformer block's pieces: LayerNorm over the features, attention scores per sample
    "layernorm-attention": (lambda n: _graph(
        (n, 3, 4), (O.LayerNorm(axis=2, epsilon=1e-5), ("x",)), (O.Transpose(perm=(0, 2, 1)), ("v0",)),
        (O.MatMul(), ("v0", "v1")), (O.Exp(), ("v2",)), (O.Div(), ("v3", "v2")), (O.Sqrt(), ("v3",))), 0),
    "quantize-per-channel": (lambda n: _graph(
        (n, 3, 2), (O.Quantize(scale=(0.1, 0.3, 0.05), zero_point=(0.0, 3.0, -2.0), qmin=-128, qmax=127, axis=1),
                    ("x",)), (O.Quantize(scale=(0.2,), zero_point=(128.0,), qmin=0, qmax=255, integer=True), ("v0",))), 0),
    # Where: a mask repeated along the batch, IsNaN of a sample's own entries, a switch per sample
    "where-per-sample": (lambda n: _graph(
        (n, 3), (O.Where(mask=np.tile(np.array([[True, False, True]]), (n, 1)), when_false=np.zeros(())), ("x",)),
        (O.Where(test="isnan", when_true=np.zeros(())), ("v0", "v0")),
        (O.Where(test="greater", other=np.zeros(())), ("v1", "x", "v1"))), 0),
    "resize-spatial": (lambda n: _graph(
        (n, 1, 3, 4), (O.Resize(axes=(2, 3), in_sizes=(3, 4), sizes=(5, 7), scales=(5 / 3, 7 / 4), mode="linear"),
                       ("x",))), 0),
}


@pytest.mark.parametrize("name", sorted(KEEP))
def test_sample_independent_graphs_are_proved(name: str) -> None:
    build, axis = KEEP[name]
    assert batch_mixing(build(1), build(2), {"x": 0}, 2) is None
    _per_sample(build, axis)


MIX: dict[str, tuple[Build, str, str]] = {
    "softmax-over-batch": (lambda n: _graph((n, 3), (O.Relu(), ("x",)), (O.Softmax(axis=0), ("v0",))),
                           "n1", "normalises over the batch axis 0"),
    # a contracted batch axis leaves the output's shape, whatever the operator
    "linear-contracts-batch": (lambda n: _graph((n, 4), (O.Transpose(perm=(1, 0)), ("x",)),
                                                (O.Linear(weight=np.ones((2, n))), ("v0",))),
                               "n1", "merges the batch axis"),
    "conv-over-batch": (lambda n: _graph((1, 3, n, 4), (O.Conv(weight=K, strides=(1, 1), pads=(1,) * 4,
                                                               dilations=(1, 1)), ("x",))),
                        "n0", "convolves over the batch axis 2"),
    "pool-over-batch": (lambda n: _graph((1, 1, n, 4), (O.GlobalAvgPool(), ("x",))),
                        "n0", "merges the batch axis"),
    "maxpool-over-batch": (lambda n: _graph((1, 1, n, 4), (O.MaxPool(kernel=(2, 1), strides=(1, 1), pads=(1, 0, 0, 0),
                                                                   dilations=(1, 1)), ("x",))),
                           "n0", "pools over the batch axis 2"),
    "concat-along-batch": (lambda n: _graph((n, 4), (O.Relu(), ("x",)), (O.Concat(axis=0), ("x", "v0"))),
                           "n1", "merges the batch axis"),
    "pad-batch": (lambda n: _graph((n, 4), (O.Pad(pads=(1, 0, 0, 0)), ("x",))), "n0", "merges the batch axis"),
    "gather-batch": (lambda n: _graph((n, 4), (O.Gather(axis=0, indices=np.array([0])), ("x",))),
                     "n0", "merges the batch axis"),
    "slice-batch": (lambda n: _graph((n, 4), (O.Slice(starts=(0, 0), ends=(1, 4), steps=(1, 1)), ("x",))),
                    "n0", "merges the batch axis"),
    "tile-batch": (lambda n: _graph((n, 4), (O.Tile(repeats=(2, 1)), ("x",))), "n0", "merges the batch axis"),
    "resize-batch": (lambda n: _graph((n, 4), (O.Resize(axes=(0,), in_sizes=(n,), sizes=(2 * n,), scales=(2.0,)),
                                               ("x",))), "n0", "merges the batch axis"),
    "quantize-per-sample": (lambda n: _graph((n, 3), (O.Quantize(scale=(0.1,) * n, zero_point=(0.0,) * n, qmin=0,
                                                                 qmax=255, axis=0), ("x",))),
                            "n0", "depends on the batch size"),  # one step per sample
    "dynamic-quantize": (lambda n: _graph((n, 3), (O.DynamicQuantize(), ("x",))),
                         "n0", "step computed from the whole tensor"),
    "layernorm-over-batch": (lambda n: _graph((n, 4), (O.LayerNorm(axis=0, epsilon=1e-5), ("x",))),
                             "n0", "normalises over the batch axis 0"),
    "matmul-of-samples": (lambda n: _graph((n, 4), (O.Transpose(perm=(1, 0)), ("x",)), (O.MatMul(), ("v0", "x"))),
                          "n1", "merges the batch axis"),
    "reshape-interleaves": (lambda n: _graph((n, 3), (O.Reshape(shape=(3, n)), ("x",))),
                            "n0", "moves entries across the batch axis"),
    "reshape-merges": (lambda n: _graph((n, 3), (O.Reshape(shape=(3 * n,)), ("x",))),
                       "n0", "merges the batch axis"),
    "parameter-depends-on-n": (lambda n: _graph((n, 3), (O.Affine(scale=np.array(float(n))), ("x",))),
                               "n0", "parameter 'scale' that depends on the batch size"),
    "mask-varies-by-sample": (lambda n: _graph((n, 3), (O.Where(mask=np.arange(3 * n).reshape(n, 3) % 2 == 0,
                                                                when_false=np.zeros(())), ("x",))),
                              "n0", "parameter 'mask' that depends on the batch size"),
    "shift-varies-by-sample": (lambda n: _graph((n, 3), (O.Affine(shift=np.arange(3.0 * n).reshape(n, 3)), ("x",))),
                               "n0", "parameter 'shift' that depends on the batch size"),
}


MIX_AXES = {"conv-over-batch": 2, "pool-over-batch": 2, "maxpool-over-batch": 2}  # else axis 0


@pytest.mark.parametrize("name", sorted(MIX))
def test_batch_mixing_graphs_name_the_node(name: str) -> None:
    build, node, reason = MIX[name]
    found = batch_mixing(build(1), build(2), {"x": MIX_AXES.get(name, 0)}, 2)
    assert found is not None and found.node == node and reason in found.reason, found


def test_a_repeated_shift_is_the_same_function() -> None:
    """A shift that repeats one row for every sample (folded from the input's shape) is kept."""
    row = np.arange(3.0)
    assert batch_mixing(*(_graph((n, 3), (O.Affine(shift=np.tile(row, (n, 1))), ("x",))) for n in (1, 2)),
                        {"x": 0}, 2) is None


def test_softmax_over_batch_really_mixes() -> None:
    """What the refusal protects: at n = 2, d y_0 / d x_1 != 0 for softmax over axis 0."""
    g = _graph((2, 3), (O.Softmax(axis=0), ("x",)))
    ex = Executor(g, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: ex(t)[0], torch.zeros(2, 3, dtype=torch.float64))
    assert float(jac[0, 0, 1, 0]) == pytest.approx(-0.25, abs=1e-15)  # -p0 p1 at p = 1/2
    assert float(np.linalg.norm(jac.reshape(6, 6).numpy(), 2)) == pytest.approx(0.5, abs=1e-15)


def test_graphs_that_differ_between_batch_sizes_refuse() -> None:
    small = _graph((1, 3), (O.Relu(), ("x",)))
    large = _graph((2, 3), (O.Relu(), ("x",)), (O.Tanh(), ("v0",)))
    found = batch_mixing(small, large, {"x": 0}, 2)
    assert found is not None and "different graph" in found.reason
    other = _graph((2, 3), (O.Tanh(), ("x",)))
    found = batch_mixing(small, other, {"x": 0}, 2)
    assert found is not None and "different operator" in found.reason


def test_unbatched_inputs_are_not_tracked() -> None:
    g = _graph((2, 3), (O.Softmax(axis=0), ("x",)))
    assert batch_mixing(g, g, {}, 2) is None  # a static batch dim: the audit is at that shape
    with pytest.raises(ValueError):
        batch_mixing(g, g, {"x": 0}, 2)  # the small graph must have batch 1
