"""The update channel's analysis: Hessian extremes by dense eigvalsh and Lanczos against exact references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stabaudit.analyses.lanczos import dense_extremes, lanczos_extremes
from stabaudit.analyses.training import (
    LANCZOS_TOLERANCE,
    METHOD_DENSE,
    METHOD_LANCZOS,
    Loss,
    Optimizer,
    TrainingSpec,
    training_dynamics,
)
from stabaudit.errors import UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, parameter_arrays, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def linear_graph(w: np.ndarray) -> Graph:
    node = Node(name="fc", op=O.Linear(weight=w, bias=None), inputs=("x",), output="y")
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, w.shape[1])),), outputs=("y",), nodes=(node,))
    return with_shapes(g.validate())


def mlp_graph(widths: tuple[int, ...] = (4, 6, 3), seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    nodes: list[Node] = []
    src = "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        w = rng.normal(size=(b, a)) / math.sqrt(a) * 1.5
        nodes.append(Node(name=f"fc{i}", op=O.Linear(weight=w, bias=rng.normal(size=b) * 0.3), inputs=(src,), output=f"h{i}"))
        src = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(Node(name=f"act{i}", op=O.Tanh(), inputs=(src,), output=f"a{i}"))
            src = f"a{i}"
    g = Graph(inputs=(TensorSpec(name="x", shape=(1, widths[0])),), outputs=(src,), nodes=tuple(nodes))
    return with_shapes(g.validate())


def reference_loss(graph: Graph, x: np.ndarray, y: np.ndarray, loss: Loss):
    """The loss of an independent torch MLP as a function of the flat parameters theta (in the
    order of parameter_arrays), and theta at the graph's arrays."""
    arrays = parameter_arrays(graph)
    keys = list(arrays)
    shapes = [arrays[k].shape for k in keys]
    sizes = [arrays[k].size for k in keys]
    theta0 = torch.cat([torch.tensor(np.asarray(arrays[k], dtype=np.float64)).reshape(-1) for k in keys])
    xt = torch.tensor(x, dtype=torch.float64)
    linears = [n.name for n in graph.nodes if isinstance(n.op, O.Linear)]

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        p = {k: t.reshape(s) for k, t, s in zip(keys, torch.split(theta, sizes), shapes, strict=True)}
        h = xt
        for i, name in enumerate(linears):
            h = h @ p[(name, "weight")].T + p[(name, "bias")] if (name, "bias") in p else h @ p[(name, "weight")].T
            if i < len(linears) - 1:
                h = torch.tanh(h)
        if loss is Loss.MSE:
            return ((h - torch.tensor(y, dtype=torch.float64)) ** 2).mean()
        return torch.nn.functional.cross_entropy(h, torch.tensor(y, dtype=torch.int64))

    return loss_of, theta0


def reference_hessian(graph: Graph, x: np.ndarray, y: np.ndarray, loss: Loss) -> np.ndarray:
    """The full Hessian by torch.autograd.functional.hessian of an independent torch MLP."""
    loss_of, theta0 = reference_loss(graph, x, y, loss)
    return torch.autograd.functional.hessian(loss_of, theta0, vectorize=True).numpy()


def test_quadratic_loss_sharpness_is_lambda_max_of_its_hessian():
    # y = W x with mse over N samples and m outputs: H = I_m kron (2/(N m)) X^T X (row-major vec W)
    rng = np.random.default_rng(1)
    n_samples, d, m = 12, 5, 3
    x = rng.normal(size=(n_samples, d)) * np.array([3.0, 1.0, 0.5, 0.2, 0.1])
    y = rng.normal(size=(n_samples, m))
    a = np.kron(np.eye(m), 2.0 / (n_samples * m) * x.T @ x)
    exact = np.linalg.eigvalsh(a)
    graph = linear_graph(rng.normal(size=(m, d)))
    spec = TrainingSpec(learning_rate=0.1, x=x, y=y)
    dense = training_dynamics(graph, spec)
    assert dense.method == METHOD_DENSE and dense.certified and dense.parameters == m * d
    assert dense.lambda_max is not None and dense.lambda_min is not None
    assert dense.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-3)
    assert dense.lambda_min.estimate == pytest.approx(exact[0], rel=1e-3)
    # the certified bracket holds the exact eigenvalue and is tight
    assert dense.lambda_max.lower is not None and dense.lambda_max.upper is not None
    assert dense.lambda_max.lower <= exact[-1] <= dense.lambda_max.upper
    assert dense.lambda_max.upper - dense.lambda_max.lower < 1e-9 * exact[-1]
    lanczos = training_dynamics(graph, spec, dense_max=0)
    assert lanczos.method == METHOD_LANCZOS and not lanczos.certified
    assert lanczos.lambda_max is not None and lanczos.lambda_max.upper is None
    assert lanczos.lambda_max.estimate == pytest.approx(exact[-1], rel=1e-3)
    assert lanczos.lambda_max.lower is not None and lanczos.lambda_max.lower <= exact[-1]


@pytest.mark.parametrize("loss", [Loss.MSE, Loss.CROSS_ENTROPY])
def test_mlp_sharpness_matches_the_dense_hessian(loss):
    rng = np.random.default_rng(2)
    graph = mlp_graph()
    x = rng.normal(size=(20, 4))
    y = rng.normal(size=(20, 3)) if loss is Loss.MSE else rng.integers(0, 3, size=20)
    spec = TrainingSpec(learning_rate=0.1, x=x, y=y, loss=loss)
    ref = np.linalg.eigvalsh(reference_hessian(graph, x, y, loss))
    result = training_dynamics(graph, spec)
    assert result.parameters == 4 * 6 + 6 + 6 * 3 + 3
    assert result.parameter_names == ("fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias")
    assert result.lambda_max is not None and result.lambda_min is not None
    assert result.lambda_max.estimate == pytest.approx(ref[-1], rel=1e-3)
    assert result.lambda_min.estimate == pytest.approx(ref[0], rel=1e-3, abs=1e-9)
    lanczos = training_dynamics(graph, spec, dense_max=0, iterations=result.parameters)
    assert lanczos.lambda_max is not None
    assert lanczos.lambda_max.estimate == pytest.approx(ref[-1], rel=1e-3)
    assert lanczos.lambda_max.estimate <= ref[-1] * (1 + 1e-9)  # an inner bound


def test_adam_preconditioned_sharpness_matches_the_scaled_hessian():
    rng = np.random.default_rng(3)
    graph = mlp_graph()
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
    arrays = parameter_arrays(graph)
    v = {f"{node}.{field}": rng.uniform(1e-6, 1e-2, size=a.shape) for (node, field), a in arrays.items()}
    spec = TrainingSpec(learning_rate=1e-3, x=x, y=y, optimizer=Optimizer.ADAM, second_moment=v)
    h = reference_hessian(graph, x, y, Loss.MSE)
    d = 1.0 / np.sqrt(np.sqrt(np.concatenate([v[k].reshape(-1) for k in v])) + 1e-8)
    ref = np.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1]
    result = training_dynamics(graph, spec)
    assert result.preconditioned is not None
    assert result.preconditioned.estimate == pytest.approx(ref, rel=1e-3)
    assert result.preconditioned.lower is not None and result.preconditioned.upper is not None
    assert result.preconditioned.lower <= ref <= result.preconditioned.upper
    lanczos = training_dynamics(graph, spec, dense_max=0, iterations=result.parameters)
    assert lanczos.preconditioned is not None
    assert lanczos.preconditioned.estimate == pytest.approx(ref, rel=1e-3)
    bad = {k: val for k, val in v.items() if k != "fc1.bias"}
    with pytest.raises(UsageError, match="missing fc1.bias"):
        training_dynamics(graph, TrainingSpec(learning_rate=1e-3, x=x, y=y, optimizer=Optimizer.ADAM, second_moment=bad))


def test_lanczos_on_a_large_random_symmetric_matrix_matches_eigvalsh():
    rng = np.random.default_rng(4)
    n = 1200
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    spectrum = np.concatenate([[-7.0, -5.5], rng.uniform(-3.0, 3.0, size=n - 4), [6.0, 9.0]])
    a = (q * spectrum) @ q.T
    exact = np.linalg.eigvalsh(a)
    e = lanczos_extremes(lambda v: a @ v, n, iterations=120, seed=0)
    assert e.iterations == 120 and not e.two_sided
    assert e.largest == pytest.approx(exact[-1], rel=1e-6)
    assert e.smallest == pytest.approx(exact[0], rel=1e-6)
    # Ritz values are inner bounds: never beyond the true extremes (up to the stated slack)
    assert e.largest - e.slack <= exact[-1] and e.smallest + e.slack >= exact[0]
    # seeded: the same start gives the same Ritz values
    again = lanczos_extremes(lambda v: a @ v, n, iterations=120, seed=0)
    assert again.largest == e.largest and again.smallest == e.smallest


def test_lanczos_on_a_dense_random_symmetric_matrix_matches_eigvalsh():
    rng = np.random.default_rng(5)
    n = 1000
    g = rng.normal(size=(n, n))
    a = (g + g.T) / 2 + np.diag(np.linspace(0, 60, n))
    exact = np.linalg.eigvalsh(a)
    e = lanczos_extremes(lambda v: a @ v, n, iterations=250, seed=1)
    assert e.largest == pytest.approx(exact[-1], rel=1e-3)
    assert e.smallest == pytest.approx(exact[0], rel=1e-3)
    assert e.largest <= exact[-1] + e.slack and e.smallest >= exact[0] - e.slack


def test_dense_bound_encloses_known_eigenvalues():
    rng = np.random.default_rng(6)
    q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    spectrum = np.linspace(-2.0, 5.0, 300)
    e = dense_extremes((q * spectrum) @ q.T)
    assert e.two_sided and e.slack > 0
    assert abs(e.largest - 5.0) <= e.slack and abs(e.smallest + 2.0) <= e.slack
    assert e.slack < 1e-9


def test_sample_cap_takes_a_seeded_subset_with_a_note():
    rng = np.random.default_rng(7)
    graph = linear_graph(rng.normal(size=(2, 3)))
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 2))
    spec = TrainingSpec(learning_rate=0.1, x=x, y=y)
    a = training_dynamics(graph, spec, seed=3)
    b = training_dynamics(graph, spec, seed=3)
    assert a.samples == 256 and any("256 of the 300" in n for n in a.notes)
    assert a.lambda_max == b.lambda_max
    c = training_dynamics(graph, spec, max_samples=300)
    exact = np.linalg.eigvalsh(2.0 / (300 * 2) * x.T @ x)[-1]
    assert c.lambda_max is not None and c.lambda_max.estimate == pytest.approx(exact, rel=1e-9)


def test_data_that_does_not_fit_the_model_is_a_usage_error():
    rng = np.random.default_rng(8)
    graph = linear_graph(rng.normal(size=(2, 3)))
    with pytest.raises(UsageError, match="model's input has 3"):
        training_dynamics(graph, TrainingSpec(learning_rate=0.1, x=rng.normal(size=(4, 5)), y=np.zeros((4, 2))))
    with pytest.raises(UsageError, match="output has 2"):
        training_dynamics(graph, TrainingSpec(learning_rate=0.1, x=rng.normal(size=(4, 3)), y=np.zeros((4, 3))))
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        training_dynamics(
            graph,
            TrainingSpec(learning_rate=0.1, x=rng.normal(size=(4, 3)), y=np.array([0, 1, 2, 1]), loss=Loss.CROSS_ENTROPY),
        )


def test_executor_parameter_substitution_is_differentiable():
    graph = mlp_graph()
    arrays = parameter_arrays(graph)
    assert list(arrays) == [("fc0", "weight"), ("fc0", "bias"), ("fc1", "weight"), ("fc1", "bias")]
    x = torch.tensor(np.random.default_rng(9).normal(size=(1, 4)))
    plain = Executor(graph, dtype=torch.float64)(x)[0]
    leaves = {k: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for k, a in arrays.items()}
    same = Executor(graph, dtype=torch.float64, parameters=leaves)(x)[0]
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    same.sum().backward()
    grad = leaves[("fc1", "bias")].grad
    assert grad is not None and torch.equal(grad, torch.ones(3, dtype=torch.float64))
    shifted = dict(leaves)
    shifted[("fc1", "bias")] = leaves[("fc1", "bias")].detach() + 1.0
    moved = Executor(graph, dtype=torch.float64, parameters=shifted)(x)[0]
    torch.testing.assert_close(moved, plain + 1.0)


def test_a_hessian_that_is_not_finite_gives_no_eigenvalues_and_says_so():
    from stabaudit.checks.training import training_report

    graph = linear_graph(np.full((2, 3), 1e200))
    spec = TrainingSpec(learning_rate=0.1, x=np.full((4, 1, 3), 1e200), y=np.zeros((4, 1, 2)))
    result = training_dynamics(graph, spec)
    assert result.lambda_max is None and result.lambda_min is None and not result.certified
    assert result.unavailable == "" and result.notes[-1] == "the loss Hessian is not finite at the stored parameters"
    assert result.parameters == 6 and result.method == "dense eigvalsh"
    report = training_report(result)
    assert report is not None and report.sharpness is None


@pytest.mark.parametrize("loss", [Loss.MSE, Loss.CROSS_ENTROPY])
def test_hvp_through_the_executor_equals_the_autograd_hvp_of_an_independent_mlp(loss):
    from stabaudit.analyses.training import _Hessian, training_parameters

    rng = np.random.default_rng(11)
    graph = mlp_graph((5, 7, 4), seed=3)
    x = rng.normal(size=(16, 5))
    y = rng.normal(size=(16, 4)) if loss is Loss.MSE else rng.integers(0, 4, size=16)
    hess = _Hessian(graph, x, y, loss, "cpu", training_parameters(graph, None, None, "cpu"))
    loss_of, theta0 = reference_loss(graph, x, y, loss)
    assert hess.n == theta0.numel() == 5 * 7 + 7 + 7 * 4 + 4
    for k in range(3):
        v = rng.normal(size=hess.n) * (10.0**k)
        _, ref = torch.autograd.functional.hvp(loss_of, theta0, torch.tensor(v))
        got = hess.matvec(v)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-10 * float(np.max(np.abs(ref.numpy()))))
        assert np.max(np.abs(got)) > 0


@pytest.mark.parametrize("loss", [Loss.MSE, Loss.CROSS_ENTROPY])
def test_lanczos_extremes_of_a_small_hessian_equal_eigvalsh_to_1e_8(loss):
    # the Lanczos path with its early stop against eigvalsh of the explicit Hessian
    rng = np.random.default_rng(12)
    graph = mlp_graph((6, 9, 5), seed=4)
    x = rng.normal(size=(24, 6))
    y = rng.normal(size=(24, 5)) if loss is Loss.MSE else rng.integers(0, 5, size=24)
    exact = np.linalg.eigvalsh(reference_hessian(graph, x, y, loss))
    spec = TrainingSpec(learning_rate=0.1, x=x, y=y, loss=loss)
    result = training_dynamics(graph, spec, dense_max=0)
    assert result.method == METHOD_LANCZOS and not result.certified
    assert result.parameters == 6 * 9 + 9 + 9 * 5 + 5
    assert result.lambda_max is not None and result.lambda_min is not None
    scale = max(abs(exact[0]), abs(exact[-1]))
    assert abs(result.lambda_max.estimate - exact[-1]) <= 1e-8 * scale
    assert abs(result.lambda_min.estimate - exact[0]) <= 1e-8 * scale
    # inner bounds, whatever the number of steps
    assert result.lambda_max.lower is not None and result.lambda_max.lower <= exact[-1]
    assert result.lambda_min.upper is not None and result.lambda_min.upper >= exact[0]
    # the early stop saved steps, and says so
    assert result.iterations < result.parameters
    assert any(n.startswith(f"Lanczos stopped after {result.iterations} of at most") for n in result.notes)


def test_lanczos_early_stop_meets_its_residual_tolerance_and_is_deterministic():
    rng = np.random.default_rng(13)
    n = 600
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    spectrum = np.concatenate([[-4.0], rng.uniform(-2.0, 2.0, size=n - 3), [5.0, 8.0]])
    a = (q * spectrum) @ q.T
    exact = np.linalg.eigvalsh(a)
    full = lanczos_extremes(lambda v: a @ v, n, iterations=150, seed=2)
    assert full.iterations == 150 and full.notes == ()
    early = lanczos_extremes(lambda v: a @ v, n, iterations=150, seed=2, tolerance=LANCZOS_TOLERANCE)
    assert 10 < early.iterations < 150
    assert early.notes == (f"Lanczos stopped after {early.iterations} of at most 150 steps: the residuals of "
                           "the extreme Ritz pairs are below 1e-06 of the spectrum's scale",)
    # residual r = 1e-6 * 8 bounds the distance to an eigenvalue; the extremes are far closer
    assert abs(early.largest - exact[-1]) <= 1e-9 and abs(early.smallest - exact[0]) <= 1e-9
    assert early.largest - early.slack <= exact[-1] and early.smallest + early.slack >= exact[0]
    again = lanczos_extremes(lambda v: a @ v, n, iterations=150, seed=2, tolerance=LANCZOS_TOLERANCE)
    assert (again.largest, again.smallest, again.iterations) == (early.largest, early.smallest, early.iterations)
    # a tolerance no run can meet: every planned step
    never = lanczos_extremes(lambda v: a @ v, n, iterations=40, seed=2, tolerance=1e-300)
    assert never.iterations == 40 and never.notes == ()
