"""Writes the soundness cases to files, audits them, and checks every certified figure against float64 truth."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from tests.soundness.cases import ONNX, TS, Case

# Relative slack for float64 reference arithmetic (a Jacobian or an SVD in float64 is off by a few
# ulps times the dimension, far below this); a certified figure beyond it is wrong, not rounded.
REL = 1e-10
# The grid sup of |sigma'| on [-12, 12] with step 1.2e-4 is below the true sup by at most
# step * sup|sigma''| (<= 1/3 for every activation here, HardSwish's): the slack of the lower-bound check.
GRID_REL = 1e-4

LINEAR_OPS = frozenset(
    {O.OpType.LINEAR, O.OpType.CONV, O.OpType.CONV_TRANSPOSE, O.OpType.AFFINE, O.OpType.AVG_POOL,
     O.OpType.GLOBAL_AVG_POOL}
)
# multi-input layers (Add, Sub, Concat) carry no number of their own: their gains enter the global bound
COMPOSED = "composed at graph level"
ELEMENTWISE = O.ACTIVATIONS - {O.OpType.SOFTMAX, O.OpType.PRELU}


@dataclass(frozen=True, kw_only=True)
class Built:
    """A model file and its float64 reference f: input tensor (the model's shape) -> output."""

    path: Path
    fmt: str
    input_shape: tuple[int, ...]
    reference: Callable[[torch.Tensor], torch.Tensor]
    # relative slack of the global checks: REL when the reference computes the file's own function;
    # an ONNX export of a torch module stores float32 roundings of what the module computes (folded
    # BatchNorm, HardSigmoid's alpha = fl32(1/6)), so the module is the file's function only to ~1e-7
    rel: float = REL
    dtype: torch.dtype = torch.float32  # of the stored weights and the model's input
    branch: Callable[[torch.Tensor], torch.Tensor] | None = None  # f of a model x + f(x)

    def flat(self) -> Callable[[torch.Tensor], torch.Tensor]:
        shape = self.input_shape
        return lambda v: self.reference(v.reshape(shape)).reshape(-1)


def _scaled(value: torch.Tensor | np.ndarray, scale: float, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if isinstance(value, np.ndarray) else value)
    return (t.double() * scale).to(dtype)


def build(case: Case, fmt: str, directory: Path, *, scale: float = 1.0, dtype: torch.dtype = torch.float32,
          batch: int | None = None) -> Built:
    """Write ``case`` as ``fmt`` with every weight multiplied by ``scale`` (stored in ``dtype``);
    ``batch``: an ONNX model with a dynamic batch dim 'N', audited at that batch size."""
    directory.mkdir(parents=True, exist_ok=True)
    shape = case.input_shape if batch is None else (batch, *case.input_shape[1:])
    path = directory / f"{case.id}.{'onnx' if fmt == ONNX else 'pt'}"
    if case.onnx is not None:
        return _build_onnx(case, path, scale, dtype, batch, shape)
    assert case.module is not None
    module = case.module().to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(_scaled(p, scale, dtype))
    reference = copy.deepcopy(module).double()  # the stored values, cast exactly
    x = torch.randn(case.input_shape, dtype=dtype)
    if fmt == ONNX:
        with warnings.catch_warnings():  # the legacy exporter's deprecation notices
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, opset_version=case.opset, input_names=["x"],
                output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if batch is not None else None,
            )
    else:
        with torch.no_grad():
            scripted = torch.jit.script(module) if case.script else torch.jit.trace(module, x)
        extra = {"stabaudit.json": json.dumps({"input_shape": list(shape)})}
        torch.jit.save(scripted, str(path), _extra_files=extra)

    def ref(v: torch.Tensor) -> torch.Tensor:
        out = reference(v)
        if isinstance(out, tuple):  # scores beside class indices: the indices are left out of the audit
            (out,) = [t for t in out if t.is_floating_point()]
        return out

    return Built(path=path, fmt=fmt, input_shape=shape, reference=ref, rel=1e-6 if fmt == ONNX else REL,
                 dtype=dtype, branch=getattr(reference, "branch", None))


def _build_onnx(case: Case, path: Path, scale: float, dtype: torch.dtype, batch: int | None,
                shape: tuple[int, ...]) -> Built:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = case.onnx
    assert spec is not None
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    params: dict[str, np.ndarray] = {}
    for name, value in spec.params().items():
        if value.dtype.kind == "f":
            value = value if name in spec.constants else _scaled(value, scale, dtype).numpy()
            value = value.astype(np_dtype)
        params[name] = value
    elem = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.DOUBLE
    dims: list[int | str] = ["N", *shape[1:]] if batch is not None else list(shape)
    graph = helper.make_graph(
        spec.nodes(params), case.id, [helper.make_tensor_value_info("x", elem, dims)],
        [helper.make_tensor_value_info("y", elem, None)],
        [numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    domains = sorted({n.domain for n in graph.node} - {"", "ai.onnx"})  # onnxruntime's contrib operators
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)]
                              + [helper.make_opsetid(d, 1) for d in domains])
    model.ir_version = 10
    onnx.save(model, str(path))
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in params.items()
               if v.dtype.kind == "f"}

    def ref(v: torch.Tensor) -> torch.Tensor:
        return spec.reference(tensors, v)

    return Built(path=path, fmt=ONNX, input_shape=shape, reference=ref, dtype=dtype)


def check_reference(built: Built, seed: int = 0) -> None:
    """The float64 reference agrees with the file's own runtime (so it is the model's function)."""
    x = torch.randn(built.input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    want = built.reference(x).detach().numpy()
    if built.fmt == ONNX:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(built.path), providers=["CPUExecutionProvider"])
        dtype = np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32
        got = sess.run(None, {"x": x.numpy().astype(dtype)})[0]
    else:
        module = torch.jit.load(str(built.path))
        out = module(x.to(built.dtype))
        if isinstance(out, tuple):  # the scores beside class indices
            (out,) = [t for t in out if t.is_floating_point()]
        got = out.detach().double().numpy()
    np.testing.assert_allclose(got.reshape(-1), want.reshape(-1), rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


# ---- float64 truth ---------------------------------------------------------------------------------
def jacobian_norm(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """||J_f(x)||_2 in float64 (autograd Jacobian, then its largest singular value)."""
    return jacobian_norms(f, [x])[0]


def jacobian_norms(f: Callable[[torch.Tensor], torch.Tensor], points: list[torch.Tensor]) -> list[float]:
    """||J_f(x)||_2 in float64 at each point (NaN where the Jacobian is not finite)."""
    if not points:
        return []
    xs = torch.stack([p.double() for p in points])
    with torch.no_grad():
        m = f(xs[0]).numel()
    # forward mode when the inputs are fewer than the outputs (n JVPs instead of m VJPs)
    jacobian = torch.func.jacfwd(f) if xs.shape[1] <= m else torch.func.jacrev(f)
    try:
        jac = torch.func.vmap(jacobian)(xs)
    except RuntimeError:  # an operator without a batching rule: one point at a time
        jac = torch.stack([torch.autograd.functional.jacobian(f, x) for x in xs])
    mats = jac.detach().reshape(len(points), -1, xs.shape[1]).numpy()
    out = []
    for mat in mats:
        if not np.all(np.isfinite(mat)):
            out.append(math.nan)
        else:
            out.append(float(np.linalg.norm(mat, 2)) if mat.size else 0.0)
    return out


def sample_points(n: int, count: int, seed: int) -> list[torch.Tensor]:
    """Seeded points of R^n at several scales, including one-signed points (every ReLU-type unit
    on one side) and sparse spikes (max pooling's most-covered element wins every window)."""
    g = torch.Generator().manual_seed(seed)
    points = []
    for i in range(count):
        scale = (0.3, 1.0, 3.0, 10.0)[i % 4]
        v = torch.randn(n, generator=g, dtype=torch.float64) * scale
        if i % 5 == 3:
            v = v.abs()
        elif i % 5 == 4:
            v = -v.abs()
        points.append(v)
    return points


def global_truth(built: Built, extra: list[torch.Tensor], seed: int = 0, count: int = 12,
                 pairs: int = 64) -> tuple[float, float]:
    """(max float64 Jacobian norm, max difference quotient) of the whole model over seeded points."""
    f = built.flat()
    n = int(np.prod(built.input_shape))
    # far points too: the constant is a supremum over all of R^n, and where the biases no longer
    # matter (|x| >> |b| / |W|) other activation regions are realised than near 0
    g = torch.Generator().manual_seed(seed + 2)
    far = [torch.randn(n, generator=g, dtype=torch.float64) * (1e4, 1e16, 1e64, 1e100)[i % 4] for i in range(32)]
    points = sample_points(n, count, seed) + far + extra
    norms = jacobian_norms(f, points)
    jmax = max((v for v in norms if math.isfinite(v)), default=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    xs = torch.randn(pairs, n, generator=g, dtype=torch.float64) * torch.tensor([0.3, 1.0, 3.0]).repeat(pairs)[:pairs, None]
    ds = torch.randn(pairs, n, generator=g, dtype=torch.float64) * torch.tensor([1e-3, 0.1, 1.0, 5.0]).repeat(pairs)[:pairs, None]
    with torch.no_grad():
        try:
            fx, fy = torch.func.vmap(f)(xs), torch.func.vmap(f)(xs + ds)
        except RuntimeError:  # an operator without a batching rule
            fx, fy = torch.stack([f(x) for x in xs]), torch.stack([f(x) for x in xs + ds])
    quotients = torch.linalg.vector_norm(fy - fx, dim=1) / torch.linalg.vector_norm(ds, dim=1)
    finite = quotients[torch.isfinite(quotients)]
    qmax = float(finite.max()) if finite.numel() else 0.0
    return jmax, qmax


def node_function(node: Node, shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float64 function of one unary node on flattened inputs of ``shape``."""
    from stabaudit.ir.executor import Executor

    graph = Graph(inputs=(TensorSpec(name=node.inputs[0], shape=shape),), outputs=(node.output,), nodes=(node,))
    ex = Executor(graph, dtype=torch.float64)
    return lambda v: ex(v.reshape(shape))[0].reshape(-1)


def activation_sup(node: Node) -> float:
    """sup |sigma'| of an element-wise activation on a grid of [-12, 12] (float64 autograd)."""
    f = node_function(node, (200_001,))
    x = torch.linspace(-12.0, 12.0, 200_001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return float(grad.abs().max())


def layer_truth(node: Node, shape: tuple[int, ...], seed: int) -> tuple[float, bool]:
    """(value, exact): the operator norm of a linear node (exact), else the largest Jacobian norm
    found at seeded points (a lower bound of the Lipschitz constant; exact for max pooling, whose
    spikes attain it, and for element-wise activations up to the grid's GRID_REL)."""
    n = int(np.prod(shape))
    f = node_function(node, shape)
    if node.op.type in LINEAR_OPS:
        return jacobian_norm(f, torch.randn(n, generator=torch.Generator().manual_seed(seed),
                                            dtype=torch.float64)), True
    points = sample_points(n, 8, seed)
    if node.op.type in (O.OpType.MAX_POOL, O.OpType.GLOBAL_MAX_POOL) and n <= 200:
        g = torch.Generator().manual_seed(seed)
        for j in range(n):
            v = torch.rand(n, generator=g, dtype=torch.float64) * 0.01
            v[j] = 1.0
            points.append(v)
    best = max((v for v in jacobian_norms(f, points) if math.isfinite(v)), default=0.0)
    if node.op.type in ELEMENTWISE:
        return max(best, activation_sup(node)), True
    if node.op.type is O.OpType.SOFTMAX:
        axis_len = shape[node.op.axis]  # type: ignore[attr-defined]
        # the supremum 1/2 (n >= 2) is approached, not attained (bounds/activations.py); it is what
        # a lower bound must not exceed
        return (0.5 if axis_len >= 2 else 0.0), True
    if node.op.type is O.OpType.PRELU:
        return best, True  # the all-positive and all-negative points attain both slopes
    return best, node.op.type in (O.OpType.MAX_POOL, O.OpType.GLOBAL_MAX_POOL) and n <= 200


# ---- the engine's figures against the truth ---------------------------------------------------------
def audit(built: Built, **options: object):  # -> Report
    """The real engine on the written file (the same entry point as ``stabaudit check``)."""
    from stabaudit.api import audit as run

    options.setdefault("method", "product")
    options.setdefault("budget", 0.05)
    options.setdefault("seed", 0)
    return run(built.path, input_shape=built.input_shape, **options)


def loaded_and_folded(built: Built) -> tuple[Graph, Graph]:
    """The graph as loaded, and the one whose nodes are the report's layers (as engine.run_stages
    builds it: affine maps folded, adjacent linear maps merged). A TorchScript file loads in this
    process: the same graph as load_model's isolated load (tests/loaders/test_ts_child.py), without
    a second child process per case."""
    from stabaudit.ir.passes import fold_affine, merge_linear_maps
    from stabaudit.loaders import load_model
    from stabaudit.loaders.torchscript import load_torchscript

    if built.fmt == TS:
        loaded = load_torchscript(built.path, input_shape=built.input_shape).graph
    else:
        loaded = load_model(built.path, input_shape=built.input_shape).graph
    return loaded, merge_linear_maps(fold_affine(loaded))


def unfolded_truth(layer_name: str, loaded: Graph) -> float | None:
    """The exact norm of a folded or merged linear layer ("conv+bn") recomputed from the loaded
    nodes it stands for, composed in float64 (independent of the fold's arithmetic); None when the
    name is not such a chain."""
    from stabaudit.ir.executor import Executor

    parts = layer_name.split("+")
    nodes = {n.name: n for n in loaded.nodes}
    if len(parts) < 2 or not all(p in nodes for p in parts):
        return None
    chain = [nodes[p] for p in parts]
    for prev, node in zip(chain, chain[1:], strict=False):
        if node.inputs != (prev.output,):
            return None
    if not all(n.op.type in LINEAR_OPS for n in chain):
        return None
    shape = tuple(loaded.shapes[chain[0].inputs[0]])
    graph = Graph(inputs=(TensorSpec(name=chain[0].inputs[0], shape=shape),), outputs=(chain[-1].output,),
                  nodes=tuple(chain))
    ex = Executor(graph, dtype=torch.float64)
    n = int(np.prod(shape))
    return jacobian_norm(lambda v: ex(v.reshape(shape))[0].reshape(-1), torch.zeros(n, dtype=torch.float64))


def layer_problems(report, built: Built, seed: int = 0) -> list[str]:
    """Every per-layer figure checked: certified upper >= the layer's true norm, certified lower <= it
    (when it is known exactly), lower <= upper, and certified means finite."""
    from stabaudit.ir.passes import smooth_part

    loaded, graph = loaded_and_folded(built)
    # a layer's figures are about its smooth part (OpBound.jump: quantization, thresholded Softplus)
    graph = smooth_part(graph)
    nodes = {n.name: n for n in graph.nodes}
    problems = []
    for layer in report.layers:
        lip = layer.lipschitz
        if lip.certified and lip.upper is None and lip.method != COMPOSED:
            problems.append(f"{layer.name}: certified without a finite upper bound")
        if lip.upper is not None and lip.lower is not None and lip.lower > lip.upper:
            problems.append(f"{layer.name}: lower {lip.lower!r} > upper {lip.upper!r}")
        node = nodes.get(layer.name)
        if node is None or (lip.upper is None and lip.lower is None) or len(node.inputs) != 1:
            continue
        truth, exact = layer_truth(node, tuple(graph.shapes[node.inputs[0]]), seed)
        unfolded = unfolded_truth(layer.name, loaded)
        if unfolded is not None and math.isfinite(unfolded):
            # the layer's true operator is the composition of the nodes it was folded from
            truth = max(truth, unfolded)
        if not math.isfinite(truth):
            continue
        if lip.certified and lip.upper is not None and lip.upper < truth * (1 - REL):
            problems.append(f"{layer.name} ({layer.op}): certified upper {lip.upper!r} < true norm {truth!r}")
        slack = GRID_REL if node.op.type in ELEMENTWISE else REL
        if exact and lip.lower_certified and lip.lower is not None and lip.lower > truth * (1 + slack):
            problems.append(f"{layer.name} ({layer.op}): certified lower {lip.lower!r} > true norm {truth!r}")
    return problems


def profile_problems(report, built: Built, seed: int = 0) -> list[str]:
    """The depth profile: each step's certified L bounds the map from the input to that node's
    output (THEORY.md SA103), checked against float64 Jacobian norms of the prefix graph."""
    from stabaudit.ir.executor import Executor
    from stabaudit.ir.passes import smooth_part

    _, graph = loaded_and_folded(built)
    graph = smooth_part(graph)  # the profile is about the smooth part, as every Lipschitz figure
    by_name = {n.name: n for n in graph.nodes}
    n = int(np.prod(built.input_shape))
    points = sample_points(n, 8, seed)
    problems = []
    for step in report.profile:
        node = by_name.get(step.layer)
        if node is None or step.upper is None or len(graph.inputs) != 1:
            continue
        prefix = Graph(inputs=graph.inputs, outputs=(node.output,), nodes=graph.nodes).needed_nodes()
        sub = Graph(inputs=graph.inputs, outputs=(node.output,), nodes=tuple(prefix))
        ex = Executor(sub, dtype=torch.float64)
        shape = graph.inputs[0].shape
        norms = jacobian_norms(lambda v, ex=ex, shape=shape: ex(v.reshape(shape))[0].reshape(-1), points)
        seen = max((v for v in norms if math.isfinite(v)), default=0.0)
        if step.upper < seen * (1 - REL):
            problems.append(f"profile at {step.layer}: {step.upper!r} < {seen!r}")
    return problems


def smooth_flat(built: Built) -> Callable[[torch.Tensor], torch.Tensor]:
    """The smooth part of the model (every jumping operator replaced by it: a quantization's clip, the
    identity of a dynamic one) in float64, on flattened inputs: what the figures and witnesses of a
    model with an additive term are about (the model as executed adds the term)."""
    from stabaudit.ir.executor import Executor
    from stabaudit.ir.passes import smooth_part
    from stabaudit.loaders import load_model

    graph = smooth_part(load_model(built.path, input_shape=built.input_shape).graph)
    return Executor(graph, dtype=torch.float64).flat()


def witness_value(report, built: Built) -> float | None:
    """The report's witness recomputed in float64 with the reference: a pair's quotient, or the
    Jacobian norm at a point."""
    w = report.lipschitz.witness
    if w is None:
        return None
    f = smooth_flat(built) if report.lipschitz.additive is not None else built.flat()
    x = torch.tensor(w.x, dtype=torch.float64)
    if w.kind == "jacobian":
        return jacobian_norm(f, x)
    y = torch.tensor(w.y, dtype=torch.float64)
    with torch.no_grad():
        fx, fy = f(x), f(y)
        num = torch.linalg.vector_norm(fy - fx).item()
        den = torch.linalg.vector_norm(y - x).item()
        # the float64 difference of two outputs is off by ~u (|f(x)| + |f(y)|): widen by it
        slack = 1e-13 * (torch.linalg.vector_norm(fx).item() + torch.linalg.vector_norm(fy).item())
    return (num + slack) / den if den > 0 else None


def global_problems(report, built: Built, seed: int = 0) -> list[str]:
    """Every global figure: each certified method's upper >= the float64 Jacobian norms and the
    difference quotients found, lower <= upper, the witness recomputes to at least the lower bound."""
    lip = report.lipschitz
    problems = []
    extra = []
    if lip.witness is not None:
        extra.append(torch.tensor(lip.witness.x, dtype=torch.float64))
    jmax, qmax = global_truth(built, extra, seed)
    if lip.additive is not None:
        # a branch switch (TorchScript Softplus above its threshold): the figures are about the
        # smooth part, a quotient across the jump is covered by the additive term (tested apart)
        qmax = 0.0
    truth = max(v for v in (jmax, qmax, 0.0) if math.isfinite(v))
    for m in lip.methods:
        if m.certified and m.upper == 0.0:  # every case has generic dense weights: its constant is > 0
            problems.append(f"method {m.method}: certified upper 0 for a non-constant model")
        if m.certified and m.upper is None:
            problems.append(f"method {m.method}: certified without a finite upper bound")
        if m.certified and m.upper is not None and m.upper < truth * (1 - built.rel):
            problems.append(f"method {m.method}: certified upper {m.upper!r} < {truth!r} (jacobian "
                            f"{jmax!r}, quotient {qmax!r})")
    if lip.certified and (lip.upper is None or lip.upper < truth * (1 - built.rel)):
        problems.append(f"global upper {lip.upper!r} < {truth!r}")
    if lip.upper is not None and lip.lower is not None and lip.lower > lip.upper:
        problems.append(f"global lower {lip.lower!r} > upper {lip.upper!r}")
    problems += profile_problems(report, built, seed)
    if lip.lower is not None:
        seen = witness_value(report, built)
        if seen is None:
            problems.append(f"global lower {lip.lower!r} without a witness")
        elif lip.lower > seen * (1 + max(built.rel, 1e-9)):
            problems.append(f"global lower {lip.lower!r} > its witness recomputed in float64 {seen!r}")
    return problems


def residual_problems(report, built: Built, seed: int = 0) -> list[str]:
    """A model that is one block x + f(x): its certified growth bound >= the block's true constant,
    and lip_f_upper >= ||J_f|| (the branch's own Jacobian: J - I would lose a tiny J_f) at seeded
    points."""
    problems = []
    f = built.flat()
    n = int(np.prod(built.input_shape))
    points = sample_points(n, 12, seed)
    block = max(jacobian_norms(f, points))
    assert built.branch is not None
    shape, g = built.input_shape, built.branch
    branch = max(jacobian_norms(lambda v: g(v.reshape(shape)).reshape(-1), points))
    for b in report.residual_blocks:
        if not b.certified:
            continue
        if b.growth_upper is not None and b.growth_upper < block * (1 - built.rel):
            problems.append(f"block {b.name}: growth_upper {b.growth_upper!r} < {block!r}")
        if b.lip_f_upper is not None and b.lip_f_upper < branch * (1 - built.rel):
            problems.append(f"block {b.name}: lip_f_upper {b.lip_f_upper!r} < {branch!r}")
        if b.lip_f_lower is not None and b.lip_f_upper is not None and b.lip_f_lower > b.lip_f_upper:
            problems.append(f"block {b.name}: lip_f_lower > lip_f_upper")
        w = b.lip_f_witness
        if w is not None and w.x and len(w.x) == n:
            # the branch's witness pair recomputed in float64 (its quotient is of h*f, the branch)
            xw, yw = np.asarray(w.x), np.asarray(w.y)
            with torch.no_grad():
                gy = g(torch.from_numpy(yw.reshape(shape))).reshape(-1).double().numpy()
                gx = g(torch.from_numpy(xw.reshape(shape))).reshape(-1).double().numpy()
            seen = float(np.linalg.norm(gy - gx) / np.linalg.norm(yw - xw))
            if w.quotient > seen * (1 + max(built.rel, 1e-9)):
                problems.append(f"block {b.name}: witness quotient {w.quotient!r} > recomputed {seen!r}")
        w = b.growth_witness
        if w is not None and w.x and len(w.x) == n:
            # the block's witness pair (the whole model is the block)
            xw, yw = np.asarray(w.x), np.asarray(w.y)
            with torch.no_grad():
                fy = f(torch.from_numpy(yw)).reshape(-1).double().numpy()
                fx = f(torch.from_numpy(xw)).reshape(-1).double().numpy()
            seen = float(np.linalg.norm(fy - fx) / np.linalg.norm(yw - xw))
            if w.quotient > seen * (1 + max(built.rel, 1e-9)):
                problems.append(f"block {b.name}: growth witness {w.quotient!r} > recomputed {seen!r}")
    if not report.residual_blocks:
        problems.append("no residual block found")
    return problems
