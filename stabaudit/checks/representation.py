"""Representation channel: SA101 global Lipschitz, SA102 per-layer gains, SA103 the exponent."""

from __future__ import annotations

import dataclasses
import math

from stabaudit.checks.base import (
    CheckContext,
    Evidence,
    bracket_status,
    branch_switch_note,
    check,
    fmt,
)
from stabaudit.report.model import Finding, GlobalLipschitz, LayerLipschitz, Severity, Status


@check("SA101", "lipschitz.global", severity=Severity.INFO, threshold_key="lipschitz", default_threshold=1.0)
def lipschitz_global(ev: Evidence, ctx: CheckContext) -> Finding:
    """The whole model's L2 Lipschitz constant K is at most K_max.

    Inequality: ||F(x) - F(y)||_2 <= K ||x - y||_2 for all inputs x, y (SA101; the
    feedforward spectral stability condition: K <= 1 is non-expansive, K < 1 contractive).
    Upper bound: the tightest certified method enabled (composition of certified per-layer
    bounds over the graph: product along chains, 1 + Lip f for x + f(x), sums at Add; a linear
    region, a subgraph affine in one value such as Conv then ConvTranspose, sums of scaled
    copies, or the selections, masks and window sums an exporter writes for an uneven adaptive
    pool (Slice, Gather, Tile, Where on a constant mask), is bounded as a whole by the certified
    norm of its explicit matrix, rounding included).
    Lower bound: the largest difference quotient |F(x) - F(y)| / |x - y| found by a seeded
    multi-start search, confirmed with a certified bound of the evaluation's rounding error
    (float64; in double-double, about 106 bits, or in four float64 limbs, about 212 bits, for
    networks whose float64 bound exceeds their outputs, such as ResNets at 224x224 and MobileNetV3);
    its witness pair is in the report.
    Status: pass when the certified upper bound is <= K_max, fail when the lower bound is
    > K_max, inconclusive when the bracket straddles K_max.
    Branch switches: a model whose executed code switches branch with a jump (torch's softplus
    returns x itself where beta x > threshold; a quantization rounds to a step, an error of at
    most half a step per entry) is not Lipschitz at all; then K and its bracket
    are about the smooth part (every switch replaced by its smooth formula) and the model as
    executed satisfies ||F(x) - F(y)||_2 <= K ||x - y||_2 + delta, with delta the certified
    additive term (lipschitz.additive in the report) stated in the message and the value; no
    pass without a finite certified delta.
    Assumptions: weights as stored, inputs unrestricted (a global statement), L2 norms of the
    flattened input and output.
    Over a domain: with `--domain` (or `domain:` in the config) the check judges K_D, the constant
    over the domain D only (||F(x) - F(y)||_2 <= K_D ||x - y||_2 for x, y in D): its upper bound is
    the domain analysis's (value ranges, then each operator bounded on the ranges of its inputs,
    composed; never above the global bound), its lower bound a confirmed pair of points in D; the
    message and the value ("over") say so.
    Default threshold 1, informational: the status is computed and reported, and while the
    check is not passing the message states the threshold that the certified upper bound would
    pass today; `--threshold lipschitz=VALUE` or `thresholds: {lipschitz: VALUE}` in the config
    sets K_max and makes this check (only this one) an error.
    """
    assert ctx.threshold is not None
    over = ""
    lip = ev.lipschitz
    if ev.domain_lipschitz is not None:
        lip = _over_domain(ev.lipschitz, ev.domain_lipschitz)
        over = f"over the domain ({lip.domain.description}): "
    jump_ok, jump_text = branch_switch_note(lip, "K")
    status = bracket_status(lip.lower, lip.upper, ctx.threshold, certified=lip.certified and jump_ok)
    bracket = f"[{fmt(lip.lower)}, {fmt(lip.upper)}]"
    text = {
        Status.PASS: f"certified K <= {fmt(lip.upper)} <= {fmt(ctx.threshold)}",
        Status.FAIL: f"K >= {fmt(lip.lower)} > {fmt(ctx.threshold)} (witness pair in the report)",
        Status.INCONCLUSIVE: f"bracket {bracket} straddles K_max = {fmt(ctx.threshold)}",
    }[status]
    if status is Status.INCONCLUSIVE and not jump_ok and bracket_status(
        lip.lower, lip.upper, ctx.threshold, certified=lip.certified
    ) is Status.PASS:
        text = f"K <= {fmt(lip.upper)} <= {fmt(ctx.threshold)} holds for the smooth part only"
    value: dict[str, float | str | None] = {"lower": lip.lower, "upper": lip.upper}
    if lip.additive is not None:
        value["additive"] = lip.additive.value
    if ev.domain_lipschitz is not None:
        value["over"] = lip.domain.kind
    advice = ctx.would_pass(lip.upper if lip.certified and jump_ok else None) if status is not Status.PASS else ""
    return ctx.finding(status, value, over + text + jump_text + advice)


def _over_domain(whole: GlobalLipschitz, domain: GlobalLipschitz) -> GlobalLipschitz:
    """The bracket over the domain: its own certified upper bound, or the global one where that is
    tighter (a global bound holds on every domain); its lower bound only from a witness in D. The
    additive term of branch switches is the model's, except where only the domain bounds it (a
    dynamic quantization's error grows with its input's range: stages._domain_additive)."""
    upper, certified = domain.upper, domain.certified
    if whole.certified and whole.upper is not None and (not certified or upper is None or whole.upper < upper):
        upper, certified = whole.upper, True
    additive = whole.additive
    if (domain.additive is not None and domain.additive.certified
            and (additive is None or not additive.certified)):
        additive = domain.additive
    return dataclasses.replace(domain, upper=upper, certified=certified, additive=additive)


@check("SA102", "lipschitz.layer", severity=Severity.INFO, threshold_key="layer_lipschitz", default_threshold=1.0)
def lipschitz_layer(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every layer's gain s_l is at most s_max (per-layer non-expansiveness).

    Inequality: s_l = Lip(layer l) <= s_max for every single-input layer (linear and conv maps
    with eval BatchNorm folded, element-wise affine maps, activations, pooling); the operator norm
    of a linear or conv layer is that of its true operator at the model's input shape (stride,
    padding, dilation, groups included). Residual adds and concatenations are composed at the
    graph level and not judged here.
    Status: pass when every certified upper bound is <= s_max, fail when a sound lower bound of
    some layer is > s_max, inconclusive otherwise. Every layer above s_max is listed.
    Default threshold 1, informational (the message states the threshold the largest certified
    layer bound would pass); `--threshold layer_lipschitz=VALUE` sets it and makes the check an
    error.
    Over a domain (`--domain`): a layer's gain is bounded on the values its input takes over the
    domain (layers.lipschitz.domain_upper) where that is tighter; a layer then fails only by
    proof over the domain, which layer lower bounds do not give (inconclusive instead).
    """
    assert ctx.threshold is not None
    t = ctx.threshold
    domain = ev.domain_lipschitz is not None
    # every single-input layer; one without a finite certified bound can never pass
    judged = [layer for layer in ev.layers if layer.op not in ("Add", "Sub")]
    # over a domain the layers' global lower bounds prove nothing (a layer may be flat on D)
    proved_above = [
        layer.name
        for layer in judged
        if not domain
        and layer.lipschitz.lower is not None and layer.lipschitz.lower_certified and layer.lipschitz.lower > t
    ]
    unproved = [layer.name for layer in judged if not _proved_below(layer.lipschitz, t)]
    uppers = [u for u in (_layer_upper(layer.lipschitz) for layer in judged) if u is not None]
    value = max(uppers) if uppers else None
    if proved_above:
        status, where = Status.FAIL, proved_above
        text = f"{len(where)} layer(s) proved above {fmt(t)}: {', '.join(where)}"
    elif not unproved:
        status, where = Status.PASS, []
        text = f"every layer gain certified <= {fmt(t)} (max {fmt(value)})"
    else:
        status, where = Status.INCONCLUSIVE, unproved
        text = f"{len(where)} layer(s) not proved <= {fmt(t)}: {', '.join(where)}"
    if status is not Status.PASS and all(_layer_upper(layer.lipschitz) is not None for layer in judged):
        text += ctx.would_pass(value)
    if domain:
        assert ev.domain_lipschitz is not None
        text = f"over the domain ({ev.domain_lipschitz.domain.description}): " + text
    return ctx.finding(status, value, text, tuple(where))


def _layer_upper(lip: LayerLipschitz) -> float | None:
    """The layer's smallest certified upper bound: global, or over the domain's ranges."""
    found = [u for u in (lip.upper if lip.certified else None, lip.domain_upper) if u is not None]
    return min(found) if found else None


def _proved_below(lip: LayerLipschitz, t: float) -> bool:
    upper = _layer_upper(lip)
    return upper is not None and upper <= t


@check("SA103", "stability.exponent", severity=Severity.INFO, threshold_key="exponent", default_threshold=0.0)
def stability_exponent(ev: Evidence, ctx: CheckContext) -> Finding:
    """The stability exponent Lambda = (1/L) * sum_l log s_l is at most Lambda_max.

    Inequality: Lambda = (1/L) log prod_l s_l, L the number of linear/conv layers. Its certified
    upper value is (1/L) log of the composed layer-gain bound (the end of the depth profile
    l -> prod_{j<=l} s_j, reported beside it); its sound lower value is (1/L) log of the global
    lower bound K_lower, since K <= prod_l s_l. The exponent alone does not prove boundedness:
    read it with SA101 and the depth profile. Over a domain (`--domain`) both ends are those of
    the domain: the composed gains on the domain's value ranges and K_D's lower bound.
    Default threshold 0, informational (the message states the threshold the certified upper
    value would pass); `--threshold exponent=VALUE` sets it and makes the check an error.
    """
    assert ctx.threshold is not None
    if ev.depth == 0 or (ev.product_upper is None and ev.domain_product_upper is None):
        return ctx.finding(Status.SKIPPED, None, "no linear or conv layer: the exponent is undefined")
    over = ""
    product = ev.product_upper
    lip = ev.lipschitz
    if ev.domain_lipschitz is not None:
        lip = _over_domain(ev.lipschitz, ev.domain_lipschitz)
        over = f"over the domain ({lip.domain.description}): "
        if ev.domain_product_upper is not None and (product is None or ev.domain_product_upper < product):
            product = ev.domain_product_upper
    assert product is not None
    up = math.log(product) / ev.depth if product > 0 else -math.inf
    lo_k = lip.lower
    lo = math.log(lo_k) / ev.depth if lo_k is not None and lo_k > 0 else None
    status = bracket_status(lo, up, ctx.threshold, certified=lip.certified)
    text = over + f"Lambda in [{fmt(lo)}, {fmt(up)}] over L = {ev.depth} layers (threshold {fmt(ctx.threshold)})"
    if status is not Status.PASS and lip.certified:
        text += ctx.would_pass(up)
    return ctx.finding(status, {"lower": lo, "upper": up if math.isfinite(up) else None}, text)
