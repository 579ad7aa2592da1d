"""SA902: the engine's forward pass against the reference runtime on seeded inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stabaudit.loaders.base import EQUIVALENCE_SAMPLES, LoadedModel, seeded_feeds

RTOL = 1e-4  # relative to the output scale max|reference|
ATOL = 1e-6
# A model that runs in half precision rounds every intermediate value with unit roundoff
# u = 2^-11 (float16) or 2^-8 (bfloat16) instead of 2^-24: its outputs differ from the engine's
# float32 pass by a few u relative to the output scale (measured: under 1 u on small MLPs and
# CNNs). 32 u leaves room for depth and still catches a wrong operator (an O(1) difference).
HALF_RTOL = {"float16": 32 * 2.0**-11, "bfloat16": 32 * 2.0**-8}
# A quantized model rounds to a step: where the runtimes' float arithmetic before a rounding differs in
# its last bit (the order of a sum, x / s against x * (1 / s)), a value within that of a tie rounds the
# other way, and the output moves by what one step of that quantization moves it by downstream. The
# tolerance adds, for every quantization, the largest output change measured when one of its entries
# moves by one step (FLIPS entries per quantization and sample, seeded): one step per quantization.
FLIPS = 2


@dataclass(frozen=True, kw_only=True)
class EquivalenceResult:
    reference: str
    max_abs_diff: float
    tolerance: float
    passed: bool
    samples: int
    precision: str = "float32"  # the float type the reference runs in (LoadedModel.precision)
    nonfinite: int = 0  # output entries where both runtimes gave NaN/Inf (counted as agreement)
    entries: int = 0  # output entries compared
    notes: tuple[str, ...] = ()


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, where NaN/Inf in the same place on both sides count as agreement.

    Both non-finite (inf against NaN, or +inf against -inf) also agrees: the float32 evaluation
    has left the representable range in both runtimes, and which non-finite value an overflow
    becomes depends on the order of the sums (inf - inf = NaN), not on the model's semantics.
    A non-finite entry against a finite one is a mismatch (inf).
    """
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        return float("inf")
    with np.errstate(invalid="ignore", over="ignore"):
        same = (a64 == b64) | (~np.isfinite(a64) & ~np.isfinite(b64))
        d = np.where(same, 0.0, np.abs(a64 - b64))
    return float(np.nan_to_num(d, nan=np.inf, posinf=np.inf).max(initial=0.0))


def _both_nonfinite(a: np.ndarray, b: np.ndarray) -> int:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        return 0
    return int(np.sum(~np.isfinite(a64) & ~np.isfinite(b64)))


def tolerance_rule(precision: str) -> tuple[float, float]:
    """(rtol, atol) of SA902 for a reference that runs in ``precision``."""
    return HALF_RTOL.get(precision, RTOL), ATOL


def _step(node: Any, env: Mapping[str, Any]) -> Any:
    """One rounding step of a quantization node's output, entry by entry (a broadcastable tensor), or
    None for any other node; ``env`` holds the node's input value (a dynamic step is the data's)."""
    import torch

    from stabaudit.ir import ops as O

    match node.op:
        case O.Quantize(integer=True) | O.DynamicQuantize(part=O.QuantPart.INTEGER):
            return torch.ones(())
        case O.Quantize() as op if node.inputs[0] in env:
            scale, _, shape = op.steps(env[node.inputs[0]].dim())
            return torch.tensor(scale, dtype=env[node.inputs[0]].dtype).reshape(shape)
        case O.Quantize():
            return torch.ones(())
        case O.DynamicQuantize(part=O.QuantPart.DEQUANTIZED) if node.inputs[0] in env:
            x = env[node.inputs[0]]
            return (torch.clamp(x.max(), min=0.0) - torch.clamp(x.min(), max=0.0)) / 255.0
        case O.DynamicQuantize(part=O.QuantPart.DEQUANTIZED):
            return torch.ones(())
    return None


def _flip_allowance(ex: Any, env: dict[str, Any], nodes: list[Any], rng: np.random.Generator) -> float:
    """Sum over the quantization ``nodes`` of the largest output change (max abs, every output) when one
    entry of the node's output moves by one step, over FLIPS seeded entries."""
    total = 0.0
    base = {name: env[name] for name in ex.graph.outputs}
    for node in nodes:
        y = env[node.output]
        if y.numel() == 0:
            continue
        steps = _step(node, env).to(y.dtype).expand_as(y).reshape(-1)
        worst = 0.0
        for j in rng.choice(y.numel(), size=min(FLIPS, y.numel()), replace=False):
            moved = y.reshape(-1).clone()
            moved[int(j)] += steps[int(j)]
            out = ex.rerun(env, node.output, moved.reshape(y.shape))
            for name, value in out.items():
                d = (value.double() - base[name].double()).abs()
                worst = max(worst, float(_nan_to_inf(d).max()) if d.numel() else 0.0)
        total += worst
    return total


def _nan_to_inf(t: Any) -> Any:
    import torch

    return torch.nan_to_num(t, nan=math.inf)


def _paired(model: LoadedModel, expected: list[np.ndarray]) -> list[np.ndarray]:
    """The reference's outputs that the graph computes, in the graph's order, picked by name when
    the loader names them (outputs that do not depend on the audited inputs are left out)."""
    names, graph_names = model.reference_outputs, model.output_names
    if not names or not graph_names or len(expected) != len(names):
        return expected
    index = {name: i for i, name in enumerate(names)}
    if any(name not in index for name in graph_names):
        return expected
    return [expected[index[name]] for name in graph_names]


def check_equivalence(model: LoadedModel, *, seed: int, samples: int = EQUIVALENCE_SAMPLES) -> EquivalenceResult:
    """Run both on ``samples`` seeded standard-normal float32 inputs (rounded to the model's
    precision when it runs in float16 or bfloat16); compare every output."""
    import torch

    from stabaudit.ir.executor import Executor

    graph = model.graph
    precision = model.precision
    rtol, atol = tolerance_rule(precision)
    rng = np.random.default_rng(seed)
    ex = Executor(graph, dtype=torch.float32)
    worst, scale, flips = 0.0, 0.0, 0.0
    quantized = [n for n in graph.nodes if _step(n, {}) is not None]
    flip_rng = np.random.default_rng(seed + 1)  # apart from the inputs' generator: same samples as before
    nonfinite = entries = 0
    for _ in range(samples):
        if model.reference_at is not None:  # the graph starts inside the model: its start tensors' values
            feeds, expected = model.reference_at(rng)  # are the reference's at the held inputs
        else:
            feeds = seeded_feeds(graph.inputs, precision, rng)
            expected = model.reference(feeds)
        expected = _paired(model, expected)
        with torch.no_grad():
            if quantized:
                env = ex.run({s.name: torch.from_numpy(feeds[s.name]) for s in graph.inputs}, keep=True)
                got = tuple(env[name] for name in graph.outputs)
                flips = max(flips, _flip_allowance(ex, env, quantized, flip_rng))
            else:
                got = ex(*(torch.from_numpy(feeds[s.name]) for s in graph.inputs))
        if len(expected) != len(got):
            return EquivalenceResult(
                reference=model.reference_name, max_abs_diff=float("inf"), tolerance=0.0, passed=False, samples=samples
            )
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, _diff(g.numpy(), e))
            nonfinite += _both_nonfinite(g.numpy(), e)
            entries += int(np.asarray(e).size)
            finite = np.abs(np.asarray(e, dtype=np.float64)[np.isfinite(e)])
            scale = max(scale, float(finite.max(initial=0.0)))
    # the tolerance is absolute plus relative to the largest finite output: no division, so an
    # all-zero (or all non-finite) output gives the absolute tolerance ATOL
    tolerance = rtol * scale + atol + flips
    notes: tuple[str, ...] = ()
    if quantized:
        notes += (
            f"equivalence: {len(quantized)} quantization(s); the tolerance adds {flips:.3g}, the output change of "
            "one rounding step in each (the runtimes may round a tie the other way after float arithmetic "
            "in another order)",
        )
    if model.reference_at is not None:
        notes += (
            f"equivalence: the reference runs the whole model with the held inputs "
            f"({', '.join(repr(n) for n in model.held)}); the engine runs from the start tensor(s) "
            f"{', '.join(repr(n) for n in model.start)} at the reference's values of them",
        )
    left_out = [name for name in model.reference_outputs if model.output_names and name not in model.output_names]
    if left_out:
        notes += (
            f"equivalence: outputs compared by name ({', '.join(repr(n) for n in model.output_names)}); "
            f"{', '.join(repr(n) for n in left_out)} not compared: outside the audited graph (constants of the "
            "audit, or values that are not real-valued tensors: see the loader's notes)",
        )
    if precision in HALF_RTOL:
        notes += (
            f"equivalence: the reference runs in {precision}; the engine's float32 pass (weights upcast "
            f"exactly) is compared on inputs rounded to {precision}, with tolerance {rtol:.3g} * max|reference| "
            f"+ {atol:.3g} (32 units of {precision} roundoff)",
        )
    if nonfinite:
        notes += (
            f"equivalence: {nonfinite} of {entries} output entries are NaN/Inf in both runtimes "
            "(float32 overflow or non-finite weights); compared on the finite entries only",
        )
    return EquivalenceResult(
        reference=model.reference_name,
        max_abs_diff=worst,
        tolerance=tolerance,
        passed=worst <= tolerance,
        samples=samples,
        precision=precision,
        nonfinite=nonfinite,
        entries=entries,
        notes=notes,
    )
