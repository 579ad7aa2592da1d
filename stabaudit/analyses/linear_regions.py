"""Linear regions bounded as a whole: the certified spectral norm of each region's explicit matrix."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stabaudit.analyses.composition import _add, _mul, compose, output_sensitivities
from stabaudit.bounds.base import Guarantee, OpBound
from stabaudit.bounds.numerics import (
    DENSE_BUDGET,
    DENSE_CHOLESKY_MAX_ENTRIES,
    DENSE_MAX_ENTRIES,
    gram_norm_bounds,
)
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.ir.regions import SELECTIONS, LinearRegion, find_linear_regions
from stabaudit.limits import check_deadline

METHOD = "linear-region"
U = 2.0**-53  # unit roundoff of float64
EPS = 2.0**-52
# Entries of the region's values held at once while the basis runs through it (32 MiB of float64;
# the executor keeps every value of the region for one chunk of basis vectors). With the matrix,
# its Gram matrix and the Cholesky factor (each at most DENSE_CHOLESKY_MAX_ENTRIES, 64 MiB) the
# peak stays under the lower search's planned batch (limits.estimate_analysis_memory, ~512 MB
# wherever a region can reach that size).
CHUNK_ENTRIES = 1 << 22
# Multiply-adds of the two forward passes of the whole basis (the matrix and its absolute
# counterpart) above which a region is left to the composition (about 2 s on two cores).
WORK_BUDGET = 4e9
# Relative gain over the composition below which a region's whole bound is not used.
MIN_GAIN = 1e-9


def _gamma(k: int) -> float:
    """gamma_k = k u / (1 - k u): the relative error of a k-term float64 dot product (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., Lemma 3.1 and eq. (3.5)), any order
    of summation, widened by 1%."""
    return 1.01 * k * U / (1.0 - k * U) if k > 0 else 0.0


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


@dataclass(frozen=True, kw_only=True)
class RegionBound:
    """A certified bound ``value`` on the Lipschitz constant of the map ``x`` -> ``output`` (a linear
    region, its translations dropped); ``composed`` is what composing its nodes' bounds gives,
    ``lower`` a sound lower bound of the same constant (the explicit matrix's certified norm)."""

    x: str
    output: str
    nodes: tuple[str, ...]
    value: float
    lower: float | None
    composed: float
    method: str = METHOD


def _linear_part(op: O.Op, absolute: bool) -> O.Op:
    """The op without its translation (bias, shift, pad value, a constant branch); with ``absolute`` every coefficient
    replaced by its absolute value and Sub by Add, so that the op's matrix is |A| entrywise."""
    mag = np.abs if absolute else (lambda a: a)
    match op:
        case O.Linear() | O.Conv() | O.ConvTranspose():
            return dataclasses.replace(op, weight=mag(np.asarray(op.weight, dtype=np.float64)), bias=None)
        case O.Affine(scale=scale, shift=shift):
            # a zero shift keeps a broadcasting shift's output shape; x + 0 is exact
            return O.Affine(
                scale=None if scale is None else mag(np.asarray(scale, dtype=np.float64)),
                shift=None if shift is None else np.zeros(np.shape(shift)),
            )
        case O.Pad():
            return dataclasses.replace(op, value=0.0)
        case O.Where(when_true=a, when_false=b):  # a constant mask: the constant branch becomes 0
            return dataclasses.replace(
                op, when_true=None if a is None else np.zeros(np.shape(a)),
                when_false=None if b is None else np.zeros(np.shape(b)),
            )
        case O.Sub() if absolute:
            return O.Add()
    return op


def _node_gamma(node: Node, graph: Graph) -> float:
    """The relative rounding factor of one node's float64 output: |fl(A v) - A v| <= gamma |A| |v|
    entrywise, with A the node's (translation-free) operator and |A| its entrywise absolute value."""
    op = node.op
    match op:
        case O.Linear(weight=w):
            return _gamma(int(np.shape(w)[-1]))  # one dot product of in_features terms per entry
        case O.Conv(weight=w) | O.ConvTranspose(weight=w):
            # at most C_in/groups * prod(kernel) products summed per output entry (ConvTranspose:
            # the taps that reach an output are a subset of the kernel)
            shape = np.shape(w)
            channels = shape[1] if isinstance(op, O.Conv) else shape[0] // max(op.groups, 1)
            return _gamma(int(channels * int(np.prod(shape[2:]))))
        case O.Affine(scale=scale):
            return _gamma(1) if scale is not None else 0.0  # one product; + 0 is exact
        case O.Add() | O.Sub():
            return _gamma(1)  # |fl(a + b) - (a + b)| <= u |a + b| <= u (|a| + |b|)
        case O.AvgPool(kernel=kernel):
            # a window sum, a division (and the 1-d kernel's multiply back): gamma_{K + 3} covers it
            return _gamma(int(np.prod(kernel)) + 3)
        case O.GlobalAvgPool():
            shape = graph.shapes[node.inputs[0]]
            return _gamma(_size(tuple(shape[2:])) + 3)
        case O.ReduceSum(axes=axes) | O.ReduceMean(axes=axes):
            # a sum of n terms (and the mean's division): gamma_{n + 3} covers it
            shape = graph.shapes[node.inputs[0]]
            return _gamma(math.prod(shape[a] for a in axes) + 3)
    return 0.0  # Reshape, Transpose, zero Pad, Concat, Slice, Gather, Tile, Where move entries exactly


_NO_UNDERFLOW = 2.0**-1021  # twice the smallest normal float: a margin for the float products below


def _smallest_coefficient(op: O.Op) -> float | None:
    """The smallest non-zero |coefficient| the op multiplies by (None: it multiplies by none)."""
    match op:
        case O.Linear(weight=c) | O.Conv(weight=c) | O.ConvTranspose(weight=c) | O.Affine(scale=c) if c is not None:
            a = np.abs(np.asarray(c, dtype=np.float64))
            return float(np.min(a[a > 0])) if np.any(a) else None
    return None


def _quantum_below(value: float) -> float:
    """A power of two q <= ulp(m) for every float |m| >= ``value`` > 0: every such float is an
    integer multiple of q (a float of exponent E is a multiple of 2^(E - 52))."""
    return math.ldexp(1.0, math.frexp(value)[1] - 1 - 52)


def _may_underflow(graph: Graph, region: LinearRegion) -> bool:
    """Whether a product in the region's float64 passes (the basis through the region, signed or
    absolute) may fall below 2^-1022, where the relative rounding model of ``_rounding`` fails (a
    product is then off by up to 2^-1075, all of it for a product rounded to 0).

    A quantum q_v per value, a power of two of which every computed entry is an integer multiple
    (so every non-zero entry is at least q_v), in topological order: 1 for the basis (entries 0
    and 1). A multiple of q plus or minus one is a multiple of q, and so is its float64 rounding
    (exact below 2^53 q; above, a multiple of its ulp, itself a multiple of q): sums (Add, Sub,
    the window sums of pools, ReduceSum, the terms of a dot product) and moves (Reshape,
    Transpose, Pad with zeros, Concat, Slice, Gather, Tile) keep the smallest quantum of their
    inputs. A coefficient c is an integer multiple of 2^(E_c - 52) (E_c its exponent), so a
    product c x is a multiple of q 2^(E_c - 52), and so is its rounding; the smallest non-zero
    |c| of a node gives the smallest such quantum. A division by a window's size K (pooling,
    ReduceMean) gives entries of at least q / K (1 - u) where non-zero, multiples of the quantum
    below that (``_quantum_below``). Every product is then a non-zero multiple of its quantum or
    zero: the passes stay normal wherever every quantum is at least 2^-1021. Sufficient, not
    necessary: where it says "may", the region is left to the composition."""
    quantum: dict[str, float] = {region.x: 1.0}
    for node in region.nodes:
        q = min((quantum.get(name, 1.0) for name in node.inputs), default=1.0)
        coefficient = _smallest_coefficient(node.op)
        if coefficient is not None:
            q *= _quantum_below(coefficient)
        match node.op:
            case O.AvgPool(kernel=kernel):
                # a window sum, a division by the window's size (and the 1-d kernel's multiply back)
                q = _quantum_below(q / float(np.prod(kernel)) ** 2 / 2.0)
            case O.GlobalAvgPool():
                q = _quantum_below(q / float(_size(tuple(graph.shapes[node.inputs[0]])[2:])) / 2.0)
            case O.ReduceMean(axes=axes):
                q = _quantum_below(q / float(math.prod(graph.shapes[node.inputs[0]][a] for a in axes)) / 2.0)
        if not q >= _NO_UNDERFLOW:
            return True
        quantum[node.output] = q
    return False


def _subgraph(graph: Graph, region: LinearRegion, absolute: bool) -> Graph:
    nodes = tuple(dataclasses.replace(n, op=_linear_part(n.op, absolute)) for n in region.nodes)
    return Graph(
        inputs=(TensorSpec(name=region.x, shape=tuple(graph.shapes[region.x])),),
        outputs=(region.output,),
        nodes=nodes,
        shapes={k: tuple(v) for k, v in graph.shapes.items()},
    )


def _work(graph: Graph, region: LinearRegion) -> float:
    """Multiply-adds of one forward pass of one basis vector through the region."""
    total = 0.0
    for node in region.nodes:
        out = _size(tuple(graph.shapes[node.output]))
        match node.op:
            case O.Linear(weight=w):
                total += out * int(np.shape(w)[-1])
            case O.Conv(weight=w) | O.ConvTranspose(weight=w):
                total += _size(tuple(graph.shapes[node.inputs[0]])) * int(np.prod(np.shape(w)[1:])) * 2
                total += out * int(np.prod(np.shape(w)[1:]))
            case O.AvgPool(kernel=kernel):
                total += out * int(np.prod(kernel)) * 2
            case O.Slice() | O.Gather() | O.Tile() | O.Where():
                total += out  # a copy of the entries selected
            case _:
                total += out + sum(_size(tuple(graph.shapes[i])) for i in node.inputs)
    return total


def _live_peak(graph: Graph, region: LinearRegion) -> int:
    """Entries of one basis vector's values held at once by the executor, which releases each
    value after its last reader (``ir.executor.released_after``; the basis vector and the output
    included)."""
    from stabaudit.ir.executor import released_after

    live = {region.x: _size(tuple(graph.shapes[region.x]))}
    peak = sum(live.values())
    for node, dead in zip(region.nodes, released_after(region.nodes, frozenset({region.output})), strict=True):
        live[node.output] = _size(tuple(graph.shapes[node.output]))
        peak = max(peak, sum(live.values()))
        for name in dead:
            live.pop(name, None)
    return peak


def _matrices(graph: Graph, region: LinearRegion) -> tuple[np.ndarray, float] | None:
    """The region's computed float64 matrix M^ (columns: images of the basis vectors) and the
    computed Frobenius norm of its absolute counterpart P^ (the region with |coefficients|), or
    None when they hold a NaN or Inf."""
    import torch

    from stabaudit.ir.executor import Executor

    n = _size(tuple(graph.shapes[region.x]))
    chunk = max(1, CHUNK_ENTRIES // max(_live_peak(graph, region), 1))
    f = Executor(_subgraph(graph, region, False), dtype=torch.float64).flat()
    g = Executor(_subgraph(graph, region, True), dtype=torch.float64).flat()
    m = _size(tuple(graph.shapes[region.output]))
    mat = np.empty((m, n), dtype=np.float64)  # [outputs, inputs]
    abs_squares = 0.0
    chunks = 0
    with torch.no_grad():
        for start in range(0, n, chunk):
            check_deadline()
            stop = min(n, start + chunk)
            basis = torch.zeros((stop - start, n), dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols = torch.func.vmap(f)(basis).numpy()
            absolute = torch.func.vmap(g)(basis).numpy()
            if not (np.all(np.isfinite(cols)) and np.all(np.isfinite(absolute))):
                return None
            mat[:, start:stop] = cols.T
            abs_squares += float(np.sum(absolute * absolute))
            chunks += 1
    if not math.isfinite(abs_squares):
        return None
    # a sum of m n squares: relative error <= gamma_{mn + chunks} (Higham Lemma 3.1), the sqrt one more u
    terms = mat.size + chunks + 2
    return mat, math.sqrt(abs_squares * (1.0 + 1.01 * terms * EPS)) * (1.0 + EPS)


def _rounding(graph: Graph, region: LinearRegion, abs_frobenius: float) -> float:
    """A bound on ||M^ - M||_2, M the exact matrix of the region (translations dropped).

    Per value v, delta_v with |v^ - v| <= delta_v P_v |e| for every input e, P_v the product of the
    nodes' absolute matrices (|A| >= |A| entrywise, so |v| <= P_v |e|): a node with rounding
    factor gamma (``_node_gamma``) gives |fl(A v^) - A v| <= gamma |A| |v^| + |A| |v^ - v|
    <= ((1 + gamma)(1 + delta_in) - 1) |A| P_in |e| (an Add or Sub: the same with |A| P_in =
    P_a + P_b and delta_in = max(delta_a, delta_b)). At the output, with e the basis vectors,
    |M^ - M| <= delta P entrywise; the computed P^ obeys |P^ - P| <= delta P by the same argument
    (its own absolute matrix is P), so P <= P^ / (1 - delta), and
    ||M^ - M||_2 <= ||M^ - M||_F <= delta / (1 - delta) ||P^||_F.
    """
    delta: dict[str, float] = {region.x: 0.0}
    for node in region.nodes:
        before = max((delta[name] for name in node.inputs), default=0.0)
        delta[node.output] = (1.0 + _node_gamma(node, graph)) * (1.0 + before) - 1.0
    d = delta[region.output] * (1.0 + 4 * EPS)
    if d >= 0.5:
        return math.inf
    return _mul(d / (1.0 - d) * (1.0 + 2 * EPS), abs_frobenius)


def _node_error(op: O.Op) -> float:
    """A bound on ||A - A'||_2 between the operator a node means and that of its stored parameters:
    the merged maps' ``error`` (``ir.passes.merge_linear_maps``), plus one float64 rounding per
    coefficient for weights and scales that the passes or the loader computed (BatchNorm folded
    into a convolution, 1/c for a division): |A - A'| <= u |A'| entrywise, so
    ||A - A'||_2 <= ||A - A'||_F <= u ||A'||_F for a weight, <= u max|scale| for a diagonal map.
    Counted for every weight (zero for weights read as they are, but harmless): a region whose
    branches cancel can be far smaller than its weights, unlike a single layer."""
    match op:
        case O.Linear(weight=w) | O.Conv(weight=w) | O.ConvTranspose(weight=w):
            fro = float(np.linalg.norm(np.asarray(w, dtype=np.float64))) * (1.0 + (np.size(w) + 2) * EPS)
            return _add(float(getattr(op, "error", 0.0)), 1.01 * U * fro)
        case O.Affine(scale=scale) if scale is not None:
            return 1.01 * U * float(np.max(np.abs(np.asarray(scale, dtype=np.float64)), initial=0.0))
    return 0.0


def _representation_errors(graph: Graph, region: LinearRegion, op_bounds: Mapping[str, OpBound]) -> float:
    """A bound on the distance between the region's exact operator (the operators its nodes mean)
    and that of its nodes' stored parameters (``_node_error`` per node).

    Replacing one node's operator A by A' changes the region's operator by S (A - A') R, with R
    the map from x to the node's input and S from its output to the region's output (the other
    nodes being linear). Swapping the nodes one at a time (telescoping, triangle inequality),
    ||M_exact - M|| <= sum_i S_i e_i R_i, where R_i and S_i are the composed and
    output-sensitivity bounds of the region's nodes, for either version of every node: the
    rules' bounds are widened by the merged maps' errors, and a node's operator moved by its
    rounding of u grows by at most (1 + 2u), so the products along the region's paths by at most
    (1 + 2u)^k <= 1 + 4 k u (k nodes, k u << 1)."""
    errors = {node.output: _node_error(node.op) for node in region.nodes}
    if not any(errors.values()):
        return 0.0
    sub = _subgraph(graph, region, False)
    comp = compose(sub, op_bounds)
    if comp.upper.guarantee is not Guarantee.UPPER:
        return math.inf
    sens = output_sensitivities(sub, op_bounds)
    total = 0.0
    for node in region.nodes:
        if errors[node.output] > 0.0:
            r = comp.per_value[node.inputs[0]]
            total = _add(total, _mul(_mul(sens.get(node.output, math.inf), errors[node.output]), r))
    return _mul(total, 1.0 + 4 * len(region.nodes) * U)


def _norm_path(rows: int, cols: int) -> str | None:
    """How the norm of a rows x cols matrix is certified, as the dense paths of the convolution
    bounds: "gram" (the Gram matrix's eigenvalue with its rounding margin, exact to ~1e-13
    relative) up to DENSE_MAX_ENTRIES, "cholesky" (a shifted-Cholesky certificate, within 5e-5,
    no lower bound) up to DENSE_CHOLESKY_MAX_ENTRIES, each within DENSE_BUDGET; else None."""
    side = min(rows, cols)
    if rows * cols <= DENSE_MAX_ENTRIES and rows * cols * side + 6.0 * side**3 <= DENSE_BUDGET:
        return "gram"
    if rows * cols <= DENSE_CHOLESKY_MAX_ENTRIES and side * side * max(rows, cols) + side**3 / 3.0 <= DENSE_BUDGET:
        return "cholesky"
    return None


def _norm_bounds(mat: np.ndarray) -> tuple[float, float | None] | None:
    """Certified (upper, lower) on ||mat||_2 by ``_norm_path``'s method; None where none fits.
    ``mat`` is overwritten (rescaled in place)."""
    path = _norm_path(*mat.shape)
    if path is None:
        return None
    if not np.any(mat):
        return 0.0, 0.0
    # scale by a power of two (exact) so that no square overflows or underflows
    peak = float(np.max(np.abs(mat)))
    exponent = int(np.frexp(peak)[1])
    scaled = np.ldexp(mat, -exponent, out=mat)  # in place: the caller's matrix is not used again
    lower: float | None = None
    if path == "gram":
        upper, lower = gram_norm_bounds(scaled)
    else:
        import torch

        from stabaudit.bounds.gram import gram_cholesky_max_norm

        upper = gram_cholesky_max_norm(torch.from_numpy(scaled)[None])[0].upper * (1.0 + 4 * EPS)
    try:
        # times 2^exponent: exact, unless the result leaves the normal range (one ulp outward then)
        upper = math.nextafter(math.ldexp(upper, exponent), math.inf)
        lower = None if lower is None else max(0.0, math.nextafter(math.ldexp(lower, exponent), 0.0))
    except OverflowError:
        return None
    return upper, lower


def region_bound(
    graph: Graph, region: LinearRegion, op_bounds: Mapping[str, OpBound]
) -> RegionBound | None:
    """The region's certified whole bound, or None when its matrix is too large to form (more
    than DENSE_CHOLESKY_MAX_ENTRIES entries, or WORK_BUDGET multiply-adds) or is not finite.

    Lip(x -> output) = ||M|| with M the exact matrix of the region's linear part (translations
    change no distance). M^ is formed by a float64 forward pass of the basis; Weyl's inequality
    gives ||M|| <= ||M^|| + ||M^ - M|| (``_rounding``) + the distance from the stored parameters
    to the operators they stand for (``_representation_errors``), and ||M^|| is certified by
    ``_norm_bounds``."""
    n = _size(tuple(graph.shapes[region.x]))
    m = _size(tuple(graph.shapes[region.output]))
    if _norm_path(m, n) is None or 2.0 * n * _work(graph, region) > WORK_BUDGET:
        return None
    if _may_underflow(graph, region):
        return None  # the rounding bound below is relative only
    if any(
        isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.all(np.isfinite(v))
        for node in region.nodes
        for v in vars(node.op).values()
    ):
        return None
    formed = _matrices(graph, region)
    if formed is None:
        return None
    mat, abs_frobenius = formed
    bounds = _norm_bounds(mat)
    if bounds is None:
        return None
    upper, lower = bounds
    err = _add(_rounding(graph, region, abs_frobenius), _representation_errors(graph, region, op_bounds))
    value = _add(upper, err)
    if not math.isfinite(value):
        return None
    composed = compose(_subgraph(graph, region, False), op_bounds)
    return RegionBound(
        x=region.x,
        output=region.output,
        nodes=tuple(n.name for n in region.nodes),
        value=value,
        lower=None if lower is None else max(0.0, lower - err),
        composed=float(composed.upper.value) if composed.upper.guarantee is Guarantee.UPPER else math.inf,
    )


def region_bounds(graph: Graph, op_bounds: Mapping[str, OpBound]) -> dict[str, RegionBound]:
    """Region output -> its whole bound, for every linear region of ``graph`` (which carries its
    shapes) whose whole bound is below the composition of its nodes' bounds by more than MIN_GAIN
    (relative). Where a region through selections (Slice, Gather, Tile, Where) cannot be formed,
    the regions between its selections are tried instead."""
    out: dict[str, RegionBound] = {}
    refused: list[set[str]] = []  # the nodes of regions through selections that could not be formed

    def bound(region: LinearRegion) -> RegionBound | None:
        check_deadline()
        found = region_bound(graph, region, op_bounds)
        # a gain at the rounding level (a chain the composition already bounds exactly) is no
        # gain: the report keeps the composition's figure there
        if found is not None and found.value < found.composed * (1.0 - MIN_GAIN):
            out[region.output] = found
        return found

    for region in find_linear_regions(graph):
        if bound(region) is None and any(node.op.type in SELECTIONS for node in region.nodes):
            refused.append({node.name for node in region.nodes})
    # the regions on either side of the selections of those (each a strict part of one)
    for region in find_linear_regions(graph, selections=False) if refused else ():
        names = {node.name for node in region.nodes}
        if region.output not in out and any(names <= big for big in refused):
            bound(region)
    return out


def region_note(bounds: Mapping[str, RegionBound]) -> tuple[str, ...]:
    """One line for the report: how many regions were bounded as a whole, and the largest gain."""
    if not bounds:
        return ()
    best = max(bounds.values(), key=lambda b: b.composed / b.value if b.value > 0 else math.inf)
    return (
        f"{len(bounds)} linear region(s) bounded as a whole by the certified norm of their explicit "
        f"matrix (largest gain: {best.x!r} -> {best.output!r}, {len(best.nodes)} nodes, "
        f"{best.value:.6g} instead of {best.composed:.6g})",
    )
