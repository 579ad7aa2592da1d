"""Residual channel: SA201 (CFL condition h*Lip f <= 2) and SA202 (depth growth of the residual blocks)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stabaudit.checks.base import CheckContext, Evidence, check, fmt
from stabaudit.report.model import Finding, ResidualBlock, ResidualDomain, Severity, Status, Witness

if TYPE_CHECKING:
    import numpy as np

    from stabaudit.analyses.residual import BranchLower, DomainBlock, WholeBlock
    from stabaudit.bounds.base import OpBound
    from stabaudit.ir.graph import Graph

_NO_BLOCK = "the model has no residual block (x + h*f(x) or P x + h*f(x))"


@dataclass(frozen=True, kw_only=True)
class ResidualEvidence:
    """The residual blocks found, with their bounds; ``samples``: points analysed per block."""

    blocks: tuple[ResidualBlock, ...]
    samples: int = 0


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def residual_evidence(
    graph: Graph,
    op_bounds: Mapping[str, OpBound],
    samples: np.ndarray | None,
    *,
    seed: int,
    whole: Mapping[str, WholeBlock] | None = None,
    lower_budget_s: float = 0.0,
    points_budget_s: float | None = None,
) -> ResidualEvidence:
    """Detect and analyse the residual blocks of ``graph`` (with shapes; the engine's folded
    graph) from the engine's per-node bounds and optional sample inputs [N, ...];
    ``lower_budget_s``: each block's own lower-bound search (analyses.residual.branch_lower);
    ``points_budget_s``: each block's Jacobians at the samples (None: unplanned)."""
    from stabaudit.analyses.residual import analyse_residual

    result = analyse_residual(graph, op_bounds, samples, seed=seed, whole=whole, lower_budget_s=lower_budget_s,
                              points_budget_s=points_budget_s)
    blocks = tuple(
        ResidualBlock(
            name=b.match.name,
            shortcut=b.match.shortcut.value,
            branch=tuple(n.name for n in b.match.branch),
            h=b.h,
            lip_f_upper=_finite(b.lip_f_upper),
            lip_f_lower=_finite(b.lip_f_lower),
            cfl=_finite(b.cfl),
            growth_upper=_finite(b.growth_upper),
            growth_lower=_finite(b.growth_lower),
            shortcut_norm=_finite(b.shortcut_norm),
            certified=b.certified,
            mu=_finite(b.mu),
            jacobian_norm=_finite(b.jacobian_norm),
            h_star=_finite(b.h_star),
            notes=b.notes,
            lip_f_witness=_witness(b.witness) if _finite(b.lip_f_lower) is not None else None,
            growth_witness=_witness(b.growth_witness) if _finite(b.growth_lower) is not None else None,
        )
        for b in result.blocks
    )
    return ResidualEvidence(blocks=blocks, samples=result.samples)


def _witness(found: BranchLower | None) -> Witness | None:
    if found is None or not found.value > 0.0:
        return None
    return Witness(x=found.x, y=found.y, quotient=found.value)


def with_domain(res: ResidualEvidence, domain: Mapping[str, DomainBlock]) -> ResidualEvidence:
    """The blocks with their numbers over the audit domain (analyses.residual.domain_blocks)."""
    blocks = []
    for b in res.blocks:
        d = domain.get(b.name)
        if d is None:
            blocks.append(b)
            continue
        lower = _finite(d.lip_f_lower)
        blocks.append(dataclasses.replace(b, domain=ResidualDomain(
            lip_f_upper=_finite(d.lip_f_upper),
            lip_f_lower=lower,
            cfl=_finite(d.cfl),
            growth_upper=_finite(d.growth_upper),
            growth_lower=_finite(d.growth_lower),
            certified=d.certified and _finite(d.lip_f_upper) is not None,
            witness=_witness(d.witness) if lower is not None else None,
        ), notes=b.notes + tuple(f"over the domain: {n}" if not n.startswith("over the domain") else n
                                 for n in d.notes)))
    return dataclasses.replace(res, blocks=tuple(blocks))


def _sampled(blocks: tuple[ResidualBlock, ...]) -> tuple[float | None, float | None]:
    """max mu and min h* over the blocks (h* only when every block has one)."""
    mus = [b.mu for b in blocks if b.mu is not None]
    stars = [b.h_star for b in blocks]
    mu = max(mus) if mus else None
    h_star = min(s for s in stars if s is not None) if stars and all(s is not None for s in stars) else None
    return mu, h_star


@check(
    "SA201",
    "residual.cfl",
    severity=Severity.INFO,
    threshold_key="residual_cfl",
    default_threshold=2.0,
)
def residual_cfl(ev: Evidence, ctx: CheckContext) -> Finding:
    """Every identity residual block x + h*f(x) satisfies the CFL-type condition h * Lip(f) <= 2.

    A residual block is one explicit Euler step of x' = f(x) with step h. When the spectrum of
    J_f is real and non-positive, max_i |1 + h*lambda_i(J_f)| <= 1 needs h * Lip(f) <= 2 (the
    discrete CFL condition). Lip(f) is the certified product-type composition of the branch's
    per-operator bounds (BatchNorm folded); h is an explicit scale at the end of the branch (a
    constant Mul, |scalar|, or max |scale| of a per-channel layer scale, f then being
    (scale/h) * the rest of the branch), else 1. A scale that folds into the linear map before it
    is part of f (h * Lip f is the same). Passes when every block's certified h * Lip(f) <= 2;
    fails when a sound lower bound of h * Lip(f) exceeds 2: a difference quotient of the branch
    confirmed with a certified bound of its rounding error, whose pair of branch inputs is in the report
    (residual_blocks[].lip_f_witness): along the top singular vector of J_f at a sample (or at
    x = 0 for an affine branch), or from a seeded search on the branch alone (inside boxes around
    the branch input at the samples, else over all branch inputs; its work is a share of
    `--budget`, counted, never timed); inconclusive otherwise. With `--inputs`, the finding also reports mu = max over blocks and
    samples of lambda_max((J_f + J_f^T)/2) (dissipativity) and, where every mu < 0, the
    admissible step h* = min 2|mu| / ||J_f||^2 (the step is contractive if h < h*). Only
    identity shortcuts are judged (the condition is stated for x + h*f(x)); projection
    blocks P x + h*f(x) are reported in `residual_blocks`. Skipped when the model has no
    residual block. Default threshold 2, informational (the message states the threshold the
    certified bound would pass); `--threshold residual_cfl=VALUE` sets it and makes the check an
    error.
    Over a domain (`--domain`): the check judges Lip(f) on R, the box of the values the block's
    input takes while the model's input ranges over the domain (interval value ranges): its upper
    bound is the branch's per-operator bounds on those ranges composed over the branch (never
    above the global one), its lower bound a confirmed pair of branch inputs inside R (the
    search above, inside R); global lower bounds do not count there. The message and the value
    ("over") say so; the numbers are in residual_blocks[].domain.
    """
    res = ev.residual
    if res is None or not res.blocks:
        return ctx.finding(Status.SKIPPED, None, _NO_BLOCK)
    blocks = tuple(b for b in res.blocks if b.shortcut == "identity")
    if not blocks:
        return ctx.finding(
            Status.SKIPPED,
            None,
            f"no identity-shortcut residual block; the CFL condition is stated for x + h*f(x) "
            f"({len(res.blocks)} projection block(s) in residual_blocks)",
        )
    t = ctx.threshold if ctx.threshold is not None else 2.0
    over, views = _views(ev, blocks)
    uppers = [v.cfl for v in views.values()]
    worst = max((u for u in uppers if u is not None), default=None)
    # h * (sound lower bound of Lip f, each from a witness pair), rounded below in the comparison
    lowers = {name: v.h * v.lip_f_lower for name, v in views.items() if v.lip_f_lower is not None}
    mu, h_star = _sampled(blocks)
    value: dict[str, object] = {
        "max_cfl": worst if all(u is not None for u in uppers) else None,
        "blocks": {name: v.cfl for name, v in views.items()},
        "mu": mu,
        "h_star": h_star,
        "samples": res.samples,
    }
    if over:
        value["over"] = over[1]
    prefix = f"over the domain ({over[0]}): " if over else ""
    extra = ""
    if mu is not None:
        extra = f"; at the samples mu = {fmt(mu)}" + (
            f", admissible step h* = {fmt(h_star)}" if h_star is not None else " (h* needs mu < 0)"
        )
    all_certified = all(v.certified and v.cfl is not None for v in views.values())
    proved = all(v.certified and v.cfl is not None and v.cfl <= t for v in views.values())
    if proved:
        return ctx.finding(
            Status.PASS,
            value,
            f"{prefix}certified h*Lip(f) <= {fmt(worst)} <= {fmt(t)} in all {len(blocks)} identity residual "
            f"block(s){extra}",
        )
    failing = tuple(name for name, low in lowers.items() if math.nextafter(low, -math.inf) > t)
    if failing:
        return ctx.finding(
            Status.FAIL,
            value,
            f"{prefix}h*Lip(f) >= {fmt(max(lowers[n] for n in failing))} > {fmt(t)} (sound lower bound, witness "
            f"pair of branch inputs in residual_blocks) in {len(failing)} of {len(blocks)} identity residual "
            f"block(s){extra}" + (ctx.would_pass(worst) if all_certified else ""),
            locations=failing,
        )
    above = tuple(name for name, v in views.items() if v.cfl is None or not v.certified or v.cfl > t)
    return ctx.finding(
        Status.INCONCLUSIVE,
        value,
        f"{prefix}certified h*Lip(f) <= {fmt(worst)}, not <= {fmt(t)}, and no sound lower bound above "
        f"{fmt(t)}, in {len(above)} of {len(blocks)} identity residual block(s){extra}"
        + (ctx.would_pass(worst) if all_certified else ""),
        locations=above,
    )


@dataclass(frozen=True, kw_only=True)
class _View:
    """The numbers a check judges one block by: global, or over the audit domain."""

    h: float
    cfl: float | None
    certified: bool
    lip_f_lower: float | None
    growth_upper: float | None
    growth_lower: float | None


def _views(ev: Evidence, blocks: tuple[ResidualBlock, ...]) -> tuple[tuple[str, str] | None, dict[str, _View]]:
    """((the domain's description, kind) or None, each block's view): over the audit domain when
    the audit has one and every block has its numbers over it, else global. Over the domain only
    the domain's lower bounds count (a global witness pair need not lie where the block's input
    ranges over D)."""
    dom = ev.domain_lipschitz
    if dom is not None and all(b.domain is not None for b in blocks):
        views = {}
        for b in blocks:
            d = b.domain
            assert d is not None
            views[b.name] = _View(h=b.h, cfl=d.cfl, certified=d.certified, lip_f_lower=d.lip_f_lower,
                                  growth_upper=d.growth_upper, growth_lower=d.growth_lower)
        return (dom.domain.description, dom.domain.kind), views
    return None, {
        b.name: _View(h=b.h, cfl=b.cfl, certified=b.certified, lip_f_lower=b.lip_f_lower,
                      growth_upper=b.growth_upper, growth_lower=b.growth_lower)
        for b in blocks
    }


@check(
    "SA202",
    "residual.growth",
    severity=Severity.INFO,
    threshold_key="residual_growth",
    default_threshold=1.0,
    inherits="lipschitz",
)
def residual_growth(ev: Evidence, ctx: CheckContext) -> Finding:
    """The depth growth of the residual blocks, prod_k Lip(block_k), is within the budget K_max.

    Inequality: ||I + h*J_f|| <= 1 + h*Lip(f) for an identity block and ||P + h*J_f|| <=
    ||P|| + h*Lip(f) for a projection block P x + h*f(x), so the growth through the blocks is
    at most G = prod_k (1 + h*Lip f_k) (or ||P_k|| + h*Lip f_k) <= exp(h * sum_k Lip f_k), with
    the certified per-operator bounds of each branch. Passes when the certified G <= K_max.
    Fails when the product of sound lower bounds of the blocks' own Lipschitz constants exceeds
    K_max (then no product of per-block constants meets the budget): each factor is the largest
    of a confirmed difference quotient of the block at a sample, 1 - h*Lip f and h*lower(Lip f)
    - 1 (reverse triangle inequality, identity blocks), the lower bounds of Lip f those of
    SA201 (witnessed pairs); a factor from a pair has it in residual_blocks[].growth_witness
    (1 - h*Lip f holds for every pair). Inconclusive otherwise. Skipped when the model has no residual block.
    Over a domain (`--domain`): each block's constant on the box of its input's value ranges over
    the domain (1 + h Lip f with Lip f bounded there, as in SA201; lower bounds from pairs inside
    that box); the product of those bounds the growth over the domain. The message and the
    value ("over") say so. The budget is `--threshold residual_growth=VALUE` (then an
    error); unset, it is K_max (`lipschitz`, shared with SA101 and SA302, default 1) and the
    check is informational, its message stating the budget the certified growth would pass.
    """
    res = ev.residual
    if res is None or not res.blocks:
        return ctx.finding(Status.SKIPPED, None, _NO_BLOCK)
    t = ctx.threshold if ctx.threshold is not None else 1.0
    over, views = _views(ev, res.blocks)
    upper: float | None = 1.0
    lower = 1.0
    for v in views.values():
        upper = (
            None
            if upper is None or v.growth_upper is None
            else math.nextafter(upper * v.growth_upper, math.inf)
        )
        low = v.growth_lower if v.growth_lower is not None else 0.0
        lower = math.nextafter(lower * low, -math.inf) if lower * low > 0.0 else 0.0
    if upper is not None and not math.isfinite(upper):
        upper = None
    certified = all(v.certified for v in views.values())
    value: dict[str, object] = {
        "upper": upper,
        "lower": lower if lower > 0.0 else None,
        "blocks": {name: v.growth_upper for name, v in views.items()},
    }
    if over:
        value["over"] = over[1]
    prefix = f"over the domain ({over[0]}): " if over else ""
    n = len(res.blocks)
    if certified and upper is not None and upper <= t:
        return ctx.finding(
            Status.PASS, value, f"{prefix}certified growth over {n} residual block(s) <= {fmt(upper)} <= {fmt(t)}"
        )
    names = tuple(b.name for b in res.blocks)
    if lower > t:
        return ctx.finding(
            Status.FAIL,
            value,
            f"{prefix}prod of the blocks' Lipschitz constants >= {fmt(lower)} > {fmt(t)} (sound lower "
            f"bounds) over {n} residual block(s); certified growth <= {fmt(upper)}"
            + (ctx.would_pass(upper) if certified else ""),
            locations=names,
        )
    return ctx.finding(
        Status.INCONCLUSIVE,
        value,
        f"{prefix}growth over {n} residual block(s) in [{fmt(lower if lower > 0.0 else None)}, "
        f"{fmt(upper)}], not proved <= {fmt(t)}" + (ctx.would_pass(upper) if certified else ""),
        locations=names,
    )
