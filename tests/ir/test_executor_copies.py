"""Tests of the executors' shared float64 copies of the operators' parameters (ir.executor.float64_copy)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from stabaudit.ir import executor as X
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, float64_copy, float64_view
from stabaudit.ir.graph import Graph, Node, TensorSpec


def _graph(weight: np.ndarray) -> Graph:
    return Graph(inputs=(TensorSpec(name="x", shape=(1, weight.shape[1])),), outputs=("y",),
                 nodes=(Node(name="fc", op=O.Linear(weight=weight, bias=None), inputs=("x",), output="y"),))


def test_executors_of_one_graph_share_one_float64_copy() -> None:
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    graph = _graph(w)
    op = graph.nodes[0].op
    assert isinstance(op, O.Linear) and not op.weight.flags.writeable
    a, b = Executor(graph, dtype=torch.float64), Executor(graph, dtype=torch.float64)
    shared = float64_copy(op.weight)
    assert shared.dtype == np.float64 and np.array_equal(shared, w.astype(np.float64))
    assert float64_copy(op.weight) is shared
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 4)))
    assert torch.equal(a(x)[0], b(x)[0])
    assert torch.equal(a(x)[0], x @ torch.from_numpy(w.astype(np.float64)).T)
    # numpy readers get a read-only view of the same memory
    view = float64_view(op.weight)
    assert np.shares_memory(view, shared) and not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    # a float32 executor makes its own float32 copy, never a float64 one
    f32 = Executor(graph, dtype=torch.float32)
    assert f32(x.float())[0].dtype == torch.float32


def test_writable_arrays_get_their_own_copy_and_copies_die_with_their_array() -> None:
    w = np.ones((2, 2))
    first, second = float64_copy(w), float64_copy(w)
    assert first is not second and not np.shares_memory(first, w)
    w[0, 0] = 5.0  # a later change of a writable array is never hidden by a shared copy
    assert float64_copy(w)[0, 0] == 5.0
    held = np.full((2, 2), 3.0)
    held.setflags(write=False)
    float64_copy(held)
    key = id(held)
    assert key in X._COPIES
    del held
    gc.collect()
    assert key not in X._COPIES


def test_a_copy_dropped_while_its_lock_is_held_does_not_deadlock() -> None:
    """An array's death runs its callback wherever it happens, a garbage collection inside
    ``float64_copy`` included, where the same thread holds the lock already."""
    import threading

    def body() -> None:
        held = np.full(2, 1.0)
        held.setflags(write=False)
        float64_copy(held)
        with X._COPIES_LOCK:
            del held  # its callback runs here, in this thread

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
