"""The report's channel sections (samples, residual blocks, training) as plain rows, shared by the
text formats so that each renders the same facts in its own markup."""

from __future__ import annotations

from dataclasses import dataclass

from stabaudit.report.model import Report


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def bracket(lower: float | None, upper: float | None) -> str:
    return f"[{num(lower)}, {num(upper)}]"


@dataclass(frozen=True, kw_only=True)
class Section:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def work_line(report: Report) -> str:
    """The planned seconds of counted work (the largest stages first) and, when timed, the time
    the audit took; empty when nothing was planned."""
    planned = {k: v for k, v in report.planned.items() if k != "total"}
    if not planned:
        return ""
    parts = ", ".join(f"{k} {v:.3g} s" for k, v in sorted(planned.items(), key=lambda kv: (-kv[1], kv[0])))
    took = report.timings.get("total")
    return (f"{report.planned.get('total', 0.0):.3g} s planned from --budget ({parts})"
            + (f"; the audit took {took:.3g} s" if took is not None else ""))


def samples_line(report: Report) -> str | None:
    """Which samples the data-dependent checks used, in one line (None: no samples)."""
    s = report.samples
    if s is None:
        return None
    where = {
        "file": f"from a file (sha256 {s.sha256[:16]})" if s.sha256 else "from a file",
        "array": "given as an array",
        "domain-uniform": f"drawn uniformly from the domain (seed {s.seed})",
        "domain-normal": f"drawn from a normal domain (seed {s.seed})",
    }.get(s.source.value, s.source.value)
    params = "; ".join(
        f"{p.name} {p.values[0]:g}" if len(p.values) == 1 else f"{p.name} {list(p.values)}" for p in s.domain
    )
    return f"{s.count} samples of shape {list(s.shape)} {where}" + (f": {params}" if params else "")


def additive_line(report: Report) -> str | None:
    """The additive term of the branch switches, in one line (None: the model has none)."""
    add = report.lipschitz.additive
    if add is None:
        return None
    state = "certified" if add.certified else "not certified"
    return (
        f"as executed ||F(x) - F(y)|| <= K ||x - y|| + {num(add.value)} ({state}; branch switches "
        f"in {', '.join(add.sources)}; K and the bracket are about the smooth part)"
    )


def sections(report: Report) -> tuple[Section, ...]:
    """Residual blocks and the update channel, when the report has them."""
    out: list[Section] = []
    if report.residual_blocks:
        rows = tuple(
            (
                b.name,
                b.shortcut,
                num(b.h),
                bracket(b.lip_f_lower, b.lip_f_upper),
                num(b.cfl),
                bracket(b.growth_lower, b.growth_upper),
                num(b.mu),
                num(b.jacobian_norm),
                num(b.h_star),
            )
            for b in report.residual_blocks
        )
        notes = tuple(f"{b.name}: {n}" for b in report.residual_blocks for n in b.notes) + tuple(
            f"{b.name}: over the domain: Lip f in {bracket(b.domain.lip_f_lower, b.domain.lip_f_upper)}, "
            f"h Lip f <= {num(b.domain.cfl)}, block growth in "
            f"{bracket(b.domain.growth_lower, b.domain.growth_upper)}"
            for b in report.residual_blocks
            if b.domain is not None
        )
        out.append(
            Section(
                title="Residual blocks x -> S(x) + h f(x) (SA201, SA202)",
                headers=("block", "shortcut", "h", "Lip f", "h Lip f", "block growth", "mu", "||J_f||", "h*"),
                rows=rows,
                notes=notes,
            )
        )
    t = report.training
    if t is not None:
        rows2: list[tuple[str, str]] = [
            ("optimizer", f"{t.optimizer}, learning rate {t.learning_rate:g}"),
            ("sharpness lambda_max(H)", f"{num(t.sharpness)} in {bracket(t.sharpness_lower, t.sharpness_upper)}"),
            ("lambda_min(H)", f"{num(t.lambda_min)} in {bracket(t.lambda_min_lower, t.lambda_min_upper)}"),
            ("margin (limit - sharpness)", num(t.margin)),
            ("method", f"{t.method} ({'certified' if t.certified else 'estimate'}), {t.iterations} iterations"),
            ("parameters, samples", f"{t.parameters}, {t.samples}"),
        ]
        if t.preconditioned_sharpness is not None:
            rows2.append(("preconditioned sharpness (Adam)", num(t.preconditioned_sharpness)))
        out.append(
            Section(
                title="Training step stability (SA501-SA503)",
                headers=("quantity", "value"),
                rows=tuple(rows2),
                notes=t.notes,
            )
        )
    return tuple(out)
