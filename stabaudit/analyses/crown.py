"""Value ranges of ReLU chains by symbolic back-substitution (CROWN / DeepPoly), rounded outward.

A graph whose needed nodes form one path of Linear (one row: a vector input), element-wise
Affine, Reshape/Flatten, Transpose and Relu nodes is a chain of steps v_j = step_j(v_{j-1}) on
flat vectors (v_0 the graph's input). ``chain_steps`` recognises it; ``crown_ranges`` bounds
every v_j over a box of v_0 by back-substitution: a linear lower bound y >= L v_j + c of a target
y (a row of a pre-activation, or of its negation for the upper end) is carried back one step at a
time to the input, where its minimum over the box is L c_0 - |L| r_0 + c (Zhang et al., "Efficient
Neural Network Robustness Certification with General Activation Functions", NeurIPS 2018; Singh
et al., "An Abstract Domain for Certifying Neural Networks" (DeepPoly), POPL 2019).

What is enclosed. The executor computes every step in float64; its value is the exact step of
its computed input plus an error e_j, |e_j| <= E_j = rel_n (|W| |v_{j-1}|max + |b|) for a Linear
of n terms (Higham, Accuracy and Stability, Lemma 3.1: a dot product of n terms and a bias is
within gamma_{n+1} of the sum of the magnitudes of its terms), rel_2 (|s| |v|max + |t|) for an
Affine x * s + t; Relu, reshapes and permutations are exact. The runs considered are all
sequences v_0 in the box, |e_j| <= E_j, each v_j in its current range; the executor's run is one
(its values lie in the ranges, by induction), and so is the exact run of the stored weights
(e = 0). Every bound below holds for all of them, so every range stays an enclosure of both.

One step back, on the rows L (a float matrix: whatever was computed) and constants c:
- Linear v_j = W v_{j-1} + b + e_j: L v_j = L' v_{j-1} + (L W - L') v_{j-1} + L b + L e_j with
  L' = fl(L W); |L W - L'| <= gamma_m |L| |W| entry-wise, so L v_j >= L' v_{j-1} + fl(L b)
  - rel_m |L| (|W| |v_{j-1}|max + |b|) - |L| E_j. Affine and permutations alike (an Affine's rows
  are scaled: one rounding per entry).
- Relu v_j = max(z, 0), z in [l, u]: a stable unit is 0 (u <= 0) or z (l >= 0); for an unstable
  one, a row's coefficient lam >= 0 takes a lower line max(z, 0) >= alpha z with alpha in {0, 1}
  (1 when u >= -l: CROWN's adaptive choice), exact; lam < 0 takes the upper chord
  max(z, 0) <= s z + t, s = u / (u - l), t >= max(-s l, u - s u) (a convex function lies below
  its chord; t rounded up by a gamma_2 margin and one ulp), and lam (s z + t) = fl(lam s) z +
  (lam s - fl(lam s)) z + lam t with |lam s - fl(lam s)| <= u |lam s|, times |z|max.
- The constants are summed with a relative margin rel_4 of the sum of their magnitudes.
At the input, y >= L v_0 + c >= fl(L c_0) - |L| r_0 - rel_n |L| (|c_0| + r_0) + c over the box
[c_0 - r_0, c_0 + r_0] (r_0 rounded up so that it holds the box). The margins use
rel_n = 1.01 (n + 8) EPS, EPS = 2^-52, above gamma_{n+4} with room for the rounding of the margin
itself (a sum of nonnegative terms); results are moved one ulp outward. Each new bound is
intersected with the interval (IBP) bound of the step on the ranges so far and with the ranges
given (``analyses.ranges``): an intersection of enclosures is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stabaudit.bounds.base import Interval
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph

EPS = 2.0**-52
TINY = 1e-290
# rows carried back at once (memory: rows x width floats)
ROW_BLOCK = 2048


def _rel(n: int) -> float:
    """A relative margin above gamma_{n+4} (u = EPS / 2), with room for its own rounding."""
    return 1.01 * (n + 8) * EPS


@dataclass(frozen=True, kw_only=True)
class Step:
    """One step of a chain on flat vectors: ``kind`` linear (w [out, in], b [out]), scale (entry-wise
    s, t), perm (out[i] = in[perm[i]]) or relu; ``name`` the node output it produces (None: an
    internal step)."""

    kind: str
    name: str | None
    size: int
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    perm: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class ReluChain:
    """The steps of a ReLU chain, its input's name and shape, and every named value's shape."""

    input: str
    input_shape: tuple[int, ...]
    steps: tuple[Step, ...]
    shapes: Mapping[str, tuple[int, ...]]

    @property
    def relus(self) -> tuple[int, ...]:
        """The indices of the Relu steps."""
        return tuple(i for i, s in enumerate(self.steps) if s.kind == "relu")


def chain_steps(graph: Graph) -> ReluChain | str:
    """The ReLU chain of ``graph`` (module docstring), or why it is not one."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return "more than one input or output"
    nodes = graph.needed_nodes()
    if not nodes:
        return "no operators"
    current = graph.inputs[0].name
    in_shape = tuple(graph.shapes.get(current, graph.inputs[0].shape))
    steps: list[Step] = []
    shapes: dict[str, tuple[int, ...]] = {current: in_shape}
    for node in nodes:
        if list(node.inputs) != [current]:
            return f"node {node.name!r} is not on a single path"
        shape_in = tuple(graph.shapes.get(current, ()))
        shape_out = tuple(graph.shapes.get(node.output, ()))
        if not shape_out or not shape_in:
            return f"no static shape at {node.name!r}"
        n_in, n_out = int(np.prod(shape_in)), int(np.prod(shape_out))
        match node.op:
            case O.Reshape():
                if n_in != n_out:
                    return f"Reshape {node.name!r} changes the size"
                steps.append(Step(kind="perm", name=node.output, size=n_out, perm=np.arange(n_out)))
            case O.Transpose(perm=axes):
                idx = np.arange(n_in).reshape(shape_in).transpose(axes).ravel()
                steps.append(Step(kind="perm", name=node.output, size=n_out, perm=idx))
            case O.Affine(scale=sc, shift=sh):
                if shape_out != shape_in:
                    return f"Affine {node.name!r} broadcasts its input"
                s = np.broadcast_to(np.asarray(1.0 if sc is None else sc, dtype=np.float64), shape_in).ravel().copy()
                t = np.broadcast_to(np.asarray(0.0 if sh is None else sh, dtype=np.float64), shape_in).ravel().copy()
                steps.append(Step(kind="scale", name=node.output, size=n_out, w=s, b=t))
            case O.Linear(weight=weight, bias=bias, error=err):
                w = np.asarray(weight, dtype=np.float64)
                if err != 0.0 or w.ndim != 2 or n_in != w.shape[1] or n_out != w.shape[0]:
                    return f"Linear {node.name!r} is not a map of one row (or stands for a merged map)"
                b = np.zeros(w.shape[0]) if bias is None else np.broadcast_to(
                    np.asarray(bias, dtype=np.float64), (w.shape[0],)).copy()
                steps.append(Step(kind="linear", name=node.output, size=n_out, w=w, b=b))
            case O.Relu():
                steps.append(Step(kind="relu", name=node.output, size=n_out))
            case _:
                return f"{node.op.type.value} {node.name!r} is not part of a ReLU chain"
        for arr in (steps[-1].w, steps[-1].b):
            if arr is not None and not np.all(np.isfinite(arr)):
                return f"non-finite parameters at {node.name!r}"
        shapes[node.output] = shape_out
        current = node.output
    if current != graph.outputs[0]:
        return "the output is not the end of the chain"
    return ReluChain(input=graph.inputs[0].name, input_shape=in_shape, steps=tuple(steps), shapes=shapes)


# ---- interval steps (IBP) -----------------------------------------------------------------------
def _mag(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(lo), np.abs(hi))


def _center_radius(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float center c and a radius r with [lo, hi] inside [c - r, c + r] (r rounded up)."""
    c = lo / 2 + hi / 2
    c = np.minimum(np.maximum(c, lo), hi)
    r = np.nextafter(np.maximum(hi - c, c - lo), np.inf)
    return c, r


def _error(step: Step, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """E_j: the executor's rounding of the step on inputs in [lo, hi] (module docstring)."""
    if step.kind == "linear":
        assert step.w is not None and step.b is not None
        return _rel(step.w.shape[1] + 1) * (np.abs(step.w) @ _mag(lo, hi) + np.abs(step.b)) + TINY
    if step.kind == "scale":
        assert step.w is not None and step.b is not None
        return _rel(2) * (np.abs(step.w) * _mag(lo, hi) + np.abs(step.b)) + TINY
    return np.zeros(step.size)


def _ibp(step: Step, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interval image of [lo, hi] by the step, its rounding included (every run above)."""
    match step.kind:
        case "perm":
            assert step.perm is not None
            return lo[step.perm], hi[step.perm]
        case "relu":
            return np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    assert step.w is not None and step.b is not None
    c, r = _center_radius(lo, hi)
    if step.kind == "linear":
        n = step.w.shape[1]
        mid = step.w @ c + step.b
        rad = np.abs(step.w) @ (r + _rel(n) * np.abs(c)) * (1 + 2 * _rel(n)) + _rel(n) * np.abs(step.b)
    else:
        mid = c * step.w + step.b
        rad = (np.abs(step.w) * (r + _rel(2) * np.abs(c))) * (1 + 2 * _rel(2)) + _rel(2) * np.abs(step.b)
    rad = rad + _error(step, lo, hi) + TINY
    return np.nextafter(mid - rad, -np.inf), np.nextafter(mid + rad, np.inf)


# ---- back-substitution --------------------------------------------------------------------------
def _relu_back(lam: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows over max(z, 0) -> rows over z, and a lower bound of the constant they shed."""
    active = lo >= 0.0
    unstable = (lo < 0.0) & (hi > 0.0)
    alpha = np.where(active | (unstable & (hi >= -lo)), 1.0, 0.0)
    # the chord's slope and offset on the unstable units (others: unused)
    den = np.where(unstable, hi - lo, 1.0)
    s = np.where(unstable, hi / den, 0.0)
    t = np.maximum(-s * lo, hi - s * hi)
    t = np.nextafter(t + 2 * _rel(2) * (np.abs(s * lo) + np.abs(hi) + np.abs(s * hi)), np.inf)
    t = np.where(unstable, t, 0.0)
    neg = (lam < 0.0) & unstable[None, :]
    low_coef = lam * alpha[None, :]  # exact: alpha in {0, 1}
    chord = lam * s[None, :]
    out = np.where(neg, chord, np.where(unstable[None, :] | active[None, :], low_coef, 0.0))
    zmag = _mag(lo, hi)
    lam_t = np.where(neg, lam * t[None, :], 0.0)
    shed = lam_t.sum(axis=1)
    slack = (EPS * np.abs(np.where(neg, chord, 0.0)) @ zmag
             + _rel(lam.shape[1]) * np.abs(lam_t).sum(axis=1))
    return out, shed - slack


def _lower_bounds(chain: ReluChain, lo: list[np.ndarray], hi: list[np.ndarray], errs: list[np.ndarray],
                  target: int, rows: np.ndarray, const: np.ndarray) -> np.ndarray:
    """Lower bounds over the runs of ``rows`` v_target + ``const`` (float rows, any sign)."""
    lam, c = rows, const.copy()
    for j in range(target, 0, -1):
        step = chain.steps[j - 1]  # produces v_j from v_{j-1}
        plo, phi = lo[j - 1], hi[j - 1]
        terms = [np.abs(c)]
        match step.kind:
            case "perm":
                assert step.perm is not None
                new = np.zeros((lam.shape[0], plo.size))
                new[:, step.perm] = lam
                lam = new
            case "relu":
                lam, shed = _relu_back(lam, plo, phi)
                c = c + shed
                terms.append(np.abs(shed))
            case "linear" | "scale":
                assert step.w is not None and step.b is not None
                alam = np.abs(lam)
                if step.kind == "linear":
                    new = lam @ step.w
                    spread = _rel(step.w.shape[0]) * (alam @ (np.abs(step.w) @ _mag(plo, phi)))
                else:
                    new = lam * step.w[None, :]
                    spread = _rel(2) * (alam @ (np.abs(step.w) * _mag(plo, phi)))
                lb = lam @ step.b
                slack = spread + _rel(step.b.size) * (alam @ np.abs(step.b)) + alam @ errs[j - 1]
                c = c + lb - slack
                terms += [np.abs(lb), slack]
                lam = new
        # the additions of the constants: a margin, then one ulp down for the last rounding
        c = np.nextafter(c - _rel(4) * sum(terms[1:], terms[0]), -np.inf)
    c0, r0 = _center_radius(lo[0], hi[0])
    alam = np.abs(lam)
    n = lam.shape[1]
    val = lam @ c0 - alam @ r0
    slack = _rel(n) * (alam @ (np.abs(c0) + r0)) * (1 + 2 * _rel(n))
    total = val + c - slack - _rel(4) * (np.abs(val) + np.abs(c) + slack) - TINY
    return np.nextafter(total, -np.inf)


def crown_flat(chain: ReluChain, lo0: np.ndarray, hi0: np.ndarray,
               given: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Enclosures lo[j] <= v_j <= hi[j] of every step's value (j = 0 the input, flat) over the box
    [lo0, hi0]; ``given``: enclosures known already (by step index), intersected in."""
    lo = [np.asarray(lo0, dtype=np.float64).ravel()]
    hi = [np.asarray(hi0, dtype=np.float64).ravel()]
    errs: list[np.ndarray] = []
    nxt_relu = {i for i, s in enumerate(chain.steps) if s.kind == "relu"}
    for j, step in enumerate(chain.steps, start=1):
        errs.append(_error(step, lo[j - 1], hi[j - 1]))
        a, b = _ibp(step, lo[j - 1], hi[j - 1])
        if given is not None and j in given:
            a, b = np.maximum(a, given[j][0]), np.minimum(b, given[j][1])
        # back-substitute where it can help: values that feed a Relu (their kinks) or the output
        feeds = (j in nxt_relu) or j == len(chain.steps)
        if step.kind in ("linear", "scale") and feeds and j > 1 and any(
                s.kind == "relu" for s in chain.steps[: j - 1]) and np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
            lo.append(a)
            hi.append(b)
            size = step.size
            best_lo, best_hi = a.copy(), b.copy()
            for start in range(0, size, ROW_BLOCK):
                idx = np.arange(start, min(size, start + ROW_BLOCK))
                rows = np.zeros((2 * idx.size, size))
                rows[np.arange(idx.size), idx] = 1.0
                rows[idx.size + np.arange(idx.size), idx] = -1.0
                # rows over v_j itself: the first step back is through this step (target j)
                bounds = _lower_bounds(chain, lo, hi, errs, j, rows, np.zeros(2 * idx.size))
                best_lo[idx] = np.maximum(best_lo[idx], bounds[: idx.size])
                best_hi[idx] = np.minimum(best_hi[idx], -bounds[idx.size:])
            lo[-1], hi[-1] = best_lo, np.maximum(best_hi, best_lo)
            continue
        lo.append(a)
        hi.append(b)
    return lo, hi


def crown_cost(graph: Graph) -> float | None:
    """The counted seconds of ``crown_ranges`` on ``graph`` (None: not a ReLU chain): two rows a
    unit of every value back-substituted (those that feed a Relu, and the output), each through
    the matrices of the steps before it (``plan.REVERSE_MACS_PER_S``)."""
    from stabaudit.analyses.plan import REVERSE_MACS_PER_S

    chain = chain_steps(graph)
    if isinstance(chain, str):
        return None
    relu_next = {i for i, s in enumerate(chain.steps) if s.kind == "relu"}
    total, before, seen_relu = 0.0, 0.0, False
    for j, step in enumerate(chain.steps, start=1):
        if step.kind == "linear" and step.w is not None:
            before += float(step.w.size)
        feeds = (j in relu_next) or j == len(chain.steps)
        if step.kind in ("linear", "scale") and feeds and seen_relu:
            total += 2.0 * step.size * before
        seen_relu = seen_relu or step.kind == "relu"
    return total / REVERSE_MACS_PER_S


def crown_ranges(graph: Graph, box: Mapping[str, Interval],
                 ranges: Mapping[str, Interval] | None = None) -> dict[str, Interval] | None:
    """The ranges of every node output of a ReLU chain over ``box`` by back-substitution,
    intersected with ``ranges`` (enclosures from ``analyses.ranges``) where given; None when the
    graph is not a ReLU chain or the box is not finite."""
    chain = chain_steps(graph)
    if isinstance(chain, str):
        return None
    iv = box[chain.input]
    lo0 = np.asarray(iv.lo, dtype=np.float64).ravel()
    hi0 = np.asarray(iv.hi, dtype=np.float64).ravel()
    if not (np.all(np.isfinite(lo0)) and np.all(np.isfinite(hi0))):
        return None
    given: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if ranges is not None:
        for j, step in enumerate(chain.steps, start=1):
            if step.name is not None and step.name in ranges:
                r = ranges[step.name]
                given[j] = (np.asarray(r.lo, dtype=np.float64).ravel(), np.asarray(r.hi, dtype=np.float64).ravel())
    lo, hi = crown_flat(chain, lo0, hi0, given)
    out: dict[str, Interval] = {chain.input: Interval(lo=lo[0].reshape(chain.input_shape).copy(),
                                                      hi=hi[0].reshape(chain.input_shape).copy())}
    for j, step in enumerate(chain.steps, start=1):
        if step.name is not None:
            shape = chain.shapes[step.name]
            out[step.name] = Interval(lo=lo[j].reshape(shape).copy(), hi=hi[j].reshape(shape).copy())
    return out


def pre_activations(chain: ReluChain, lo: Sequence[np.ndarray], hi: Sequence[np.ndarray],
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The enclosures of each Relu's input, in order (from ``crown_flat``'s lists)."""
    return [(lo[i], hi[i]) for i in chain.relus]


__all__ = ["ReluChain", "Step", "chain_steps", "crown_cost", "crown_flat", "crown_ranges", "pre_activations"]
