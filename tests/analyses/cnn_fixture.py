"""A small CNN with every structure the receptive-field analyses handle, and float64 Jacobians at
points of a ball around a point of it (shared by the tests of analyses.patch_jacobian,
analyses.symbolic, analyses.backsub and analyses.reference_jacobian)."""

from __future__ import annotations

import numpy as np
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor, with_shapes
from stabaudit.ir.graph import Graph, Node, TensorSpec


def cnn(seed: int = 0, softmax: bool = True) -> Graph:
    """NHWC input, normalisation, a strided padded conv, PReLU, an overlapping ceil-mode max pool, a
    grouped dilated conv, a residual 1x1 branch, a dense head with a softmax and a plain output."""
    rng = np.random.default_rng(seed)

    def conv(cin: int, cout: int, k: int, *, stride: int = 1, pad: int = 0, dil: int = 1, groups: int = 1) -> O.Conv:
        return O.Conv(weight=rng.normal(size=(cout, cin // groups, k, k)) * 0.5, bias=rng.normal(size=cout) * 0.2,
                      strides=(stride, stride), pads=(pad, pad, pad, pad), dilations=(dil, dil), groups=groups)

    nodes = [
        Node(name="t", op=O.Transpose(perm=(0, 3, 1, 2)), inputs=("x",), output="t"),
        Node(name="norm", op=O.Affine(scale=np.array([[[[1.5]], [[0.8]]]]), shift=np.array([[[[-0.2]], [[0.1]]]])),
             inputs=("t",), output="n"),
        Node(name="c1", op=conv(2, 4, 3, stride=2, pad=1), inputs=("n",), output="c1"),
        Node(name="p1", op=O.PRelu(slope=rng.uniform(0.1, 0.3, size=(1, 4, 1, 1))), inputs=("c1",), output="a1"),
        Node(name="mp", op=O.MaxPool(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=True),
             inputs=("a1",), output="m"),
        Node(name="c2", op=conv(4, 4, 3, pad=2, dil=2, groups=2), inputs=("m",), output="c2"),
        Node(name="r2", op=O.Relu(), inputs=("c2",), output="a2"),
        Node(name="c3", op=conv(4, 4, 1), inputs=("m",), output="c3"),
        Node(name="add", op=O.Add(), inputs=("a2", "c3"), output="s"),
        Node(name="flat", op=O.Reshape(shape=(1, -1)), inputs=("s",), output="f"),
    ]
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 9, 9, 2)),), outputs=("f",), nodes=tuple(nodes)).validate())
    n = int(np.prod(g.shapes["s"]))
    nodes[-1] = Node(name="flat", op=O.Reshape(shape=(1, n)), inputs=("s",), output="f")
    nodes += [
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(3, n)) * 0.3, bias=rng.normal(size=3) * 0.1),
             inputs=("f",), output="y"),
        Node(name="fc2", op=O.Linear(weight=rng.normal(size=(2, n)) * 0.3), inputs=("f",), output="z"),
    ]
    outputs = ("y", "z")
    if softmax:
        nodes.append(Node(name="sm", op=O.Softmax(axis=-1), inputs=("z",), output="p"))
        outputs = ("y", "p")
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 9, 9, 2)),), outputs=outputs,
                             nodes=tuple(nodes)).validate())


def ball_jacobians(g: Graph, x0: np.ndarray, eps: float, n: int, seed: int) -> np.ndarray:
    ex = Executor(g, dtype=torch.float64)

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ex(v.reshape(1, 9, 9, 2))])

    rng = np.random.default_rng(seed)
    pts = x0[None] + rng.uniform(-eps, eps, size=(n, x0.size))
    pts[: n // 4] = x0[None] + eps * np.sign(rng.normal(size=(n // 4, x0.size)))  # corners
    return torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts)).numpy()




def residual_cnn(seed: int, blocks: int = 3, ch: int = 8, hw: int = 10) -> Graph:
    """A He-initialised ReLU ResNet: a stem conv, ``blocks`` residual blocks of two 3x3 convs, a
    dense head of 10 outputs; input [1, 3, hw, hw]."""
    rng = np.random.default_rng(seed)

    def conv(ci: int, co: int) -> O.Conv:
        return O.Conv(weight=rng.normal(size=(co, ci, 3, 3)) * np.sqrt(2 / (ci * 9)), bias=rng.normal(size=co) * 0.05,
                      strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))

    nodes = [Node(name="c0", op=conv(3, ch), inputs=("x",), output="h0"),
             Node(name="r0", op=O.Relu(), inputs=("h0",), output="a0")]
    prev = "a0"
    for b in range(blocks):
        nodes += [Node(name=f"b{b}c1", op=conv(ch, ch), inputs=(prev,), output=f"b{b}h1"),
                  Node(name=f"b{b}r1", op=O.Relu(), inputs=(f"b{b}h1",), output=f"b{b}a1"),
                  Node(name=f"b{b}c2", op=conv(ch, ch), inputs=(f"b{b}a1",), output=f"b{b}h2"),
                  Node(name=f"b{b}add", op=O.Add(), inputs=(f"b{b}h2", prev), output=f"b{b}s"),
                  Node(name=f"b{b}r2", op=O.Relu(), inputs=(f"b{b}s",), output=f"b{b}o")]
        prev = f"b{b}o"
    n = ch * hw * hw
    nodes += [Node(name="flat", op=O.Reshape(shape=(1, n)), inputs=(prev,), output="f"),
              Node(name="fc", op=O.Linear(weight=rng.normal(size=(10, n)) / np.sqrt(n), bias=rng.normal(size=10) * 0.1),
                   inputs=("f",), output="y")]
    return with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3, hw, hw)),), outputs=("y",),
                             nodes=tuple(nodes)).validate())


def jacobian_norms(g: Graph, pts: np.ndarray) -> np.ndarray:
    """||J(x)||_2 of ``g`` (float64) at each point."""
    ex = Executor(g, dtype=torch.float64)
    shape = g.inputs[0].shape

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in ex(v.reshape(shape))])

    jac = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(pts))
    return torch.linalg.matrix_norm(jac, 2).numpy()


def ball_points(x0: np.ndarray, eps: float, n: int, seed: int) -> np.ndarray:
    """n points of the linf ball around x0, the first quarter at its corners (seeded)."""
    rng = np.random.default_rng(seed)
    pts = x0[None] + rng.uniform(-eps, eps, size=(n, x0.size))
    pts[: n // 4] = x0[None] + eps * np.sign(rng.normal(size=(n // 4, x0.size)))
    return pts


def values_at(g: Graph, pts: np.ndarray) -> dict[str, np.ndarray]:
    """Every value of ``g`` (float64 executor) at each point: [points, *shape] per name."""
    ex = Executor(g, dtype=torch.float64)
    name = g.inputs[0].name
    shape = g.inputs[0].shape
    envs = torch.func.vmap(lambda p: ex.run({name: p.reshape(shape)}, keep=True))(torch.from_numpy(pts))
    return {k: v.numpy() for k, v in envs.items()}
