"""The executor releases each value after its last reader (a run without ``keep``)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _graph() -> Graph:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 4))
    return Graph(
        inputs=(TensorSpec(name="x", shape=(1, 4)),),
        outputs=("y", "a"),  # "a" is an output read again later
        nodes=(
            Node(name="fc1", op=O.Linear(weight=w), inputs=("x",), output="a"),
            Node(name="relu", op=O.Relu(), inputs=("a",), output="b"),
            Node(name="fc2", op=O.Linear(weight=w), inputs=("b",), output="c"),
            Node(name="add", op=O.Add(), inputs=("c", "b"), output="d"),  # b read twice
            Node(name="sub", op=O.Sub(), inputs=("d", "a"), output="y"),
        ),
    )


def test_values_are_released_after_their_last_reader_and_outputs_kept() -> None:
    ex = Executor(_graph(), dtype=torch.float64)
    assert [set(d) for d in ex._dead] == [{"x"}, set(), set(), {"b", "c"}, {"d"}]
    x = torch.randn(1, 4, dtype=torch.float64)
    kept = ex.run({"x": x}, keep=True)
    out = ex.run({"x": x})
    assert set(out) == {"y", "a"}
    assert torch.equal(out["y"], kept["y"]) and torch.equal(out["a"], kept["a"])
    assert set(kept) == {"x", "a", "b", "c", "d", "y"}


def test_a_released_value_is_freed_during_the_run() -> None:
    """The relu's output is gone (no reference left) by the time the last node runs."""
    graph = _graph()
    ex = Executor(graph, dtype=torch.float64)
    refs: list[weakref.ref[torch.Tensor]] = []
    seen: list[bool] = []
    kernels = list(ex._kernels)
    relu_node, relu_kernel = kernels[1]
    sub_node, sub_kernel = kernels[4]

    def relu_spy(args: list[torch.Tensor]) -> torch.Tensor:
        out = relu_kernel(args)
        refs.append(weakref.ref(out))
        return out

    def sub_spy(args: list[torch.Tensor]) -> torch.Tensor:
        seen.append(refs[0]() is None)
        return sub_kernel(args)

    kernels[1] = (relu_node, relu_spy)
    kernels[4] = (sub_node, sub_spy)
    ex._kernels = kernels
    ex.run({"x": torch.randn(1, 4, dtype=torch.float64)})
    assert seen == [True]
    seen.clear()
    refs.clear()
    ex.run({"x": torch.randn(1, 4, dtype=torch.float64)}, keep=True)
    assert seen == [False]


@pytest.mark.parametrize("indices", [
    np.array(2), np.array([1, 2, 3]), np.array([0, 2, 4]), np.array([[0, 1], [2, 3]]),
    np.array([3, 1]), np.array([1, 1, 2]), np.array([4]), np.array([0, 3]),
])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather_is_numpy_take_whether_a_view_or_a_copy(indices: np.ndarray, axis: int) -> None:
    """Evenly spaced increasing indices are taken as a strided view, the others by index_select."""
    x = np.arange(5 * 5 * 5, dtype=np.float64).reshape(5, 5, 5)
    graph = Graph(inputs=(TensorSpec(name="x", shape=x.shape),), outputs=("y",),
                  nodes=(Node(name="g", op=O.Gather(axis=axis, indices=indices), inputs=("x",), output="y"),))
    (y,) = Executor(graph, dtype=torch.float64)(torch.from_numpy(x))
    assert np.array_equal(y.numpy(), np.take(x, indices, axis=axis))
