"""The report of a refused audit: a model that could not be read or trusted still gets a report."""

from __future__ import annotations

from stabaudit.errors import EquivalenceError, StabauditError, UnsupportedOperatorError
from stabaudit.report.model import (
    Equivalence,
    Finding,
    GlobalLipschitz,
    ModelInfo,
    Report,
    RuleInfo,
    Severity,
    Status,
    ToolInfo,
)

REFUSED_NOTE = "refused: the audit could not run; no bound was computed"

# Not a check that runs: the finding of an audit that stopped before any check could (a model that
# is missing, unreadable, malformed, too large, timed out, or a config that cannot be applied).
AUDIT_REFUSED = RuleInfo(
    id="SA900",
    name="audit.refused",
    summary="The audit could run: the model was read and its settings applied.",
    doc=(
        "The audit could run: the model file was found and read, and the audit's settings (config, "
        "options, inputs, resource limits) could be applied.\n\n"
        "When they could not, the audit stops with exit code 2 and its report holds this one failed "
        "finding, with the reason, and no bound (a report is still written, so CI uploads find it). "
        "Unsupported operators (SA901) and an engine that does not reproduce the reference runtime "
        "(SA902) are reported under their own ids."
    ),
    severity=Severity.ERROR,
    default_threshold=None,
)


def refusal_report(
    exc: StabauditError,
    *,
    path: str,
    fail_on: str,
    tool: ToolInfo,
    created: str,
    rules: tuple[RuleInfo, ...] = (),
    sha256: str = "",
) -> Report:
    """A minimal report of an audit that stopped with ``exc`` (exit code 2): one failed finding,
    SA901 (unsupported operators), SA902 (equivalence) or SA900 (anything else), verdict fail, no
    layers and no bounds. ``rules``: the check catalogue, for the SA901/SA902 descriptions."""
    reason = "; ".join(exc.problems)
    value: object = None
    match exc:
        case UnsupportedOperatorError():
            rule_id, name, value = "SA901", "coverage.operators", dict(exc.counts)
        case EquivalenceError():
            rule_id, name = "SA902", "equivalence"
        case _:
            rule_id, name = AUDIT_REFUSED.id, AUDIT_REFUSED.name
    known = {r.id: r for r in rules} | {AUDIT_REFUSED.id: AUDIT_REFUSED}
    rule = known.get(rule_id) or RuleInfo(  # no catalogue given: a short entry, so SARIF keeps the finding
        id=rule_id,
        name=name,
        summary=name,
        doc=f"`stabaudit explain {rule_id}` describes this check.",
        severity=Severity.ERROR,
        default_threshold=None,
    )
    finding = Finding(
        id=rule_id,
        name=name,
        status=Status.FAIL,
        severity=Severity.ERROR,
        value=value,
        threshold=None,
        message=reason,
    )
    return Report(
        tool=tool,
        model=ModelInfo(path=path, format="unknown", sha256=sha256, parameters=0, input_shape=()),
        equivalence=Equivalence(
            reference="", max_abs_diff=float("nan"), tolerance=float("nan"), passed=False, samples=0
        ),
        layers=(),
        lipschitz=GlobalLipschitz(
            upper=None, lower=None, upper_method="", lower_method="", certified=False, witness=None
        ),
        profile=(),
        checks=(finding,),
        verdict="fail",
        exit_code=exc.exit_code,
        fail_on=fail_on,
        created=created,
        notes=(REFUSED_NOTE,),
        rules=(rule,),
        # a timeout or the memory budget: the JSON says where it stopped, like an incomplete report's
        complete=exc.stopped is None,
        stopped=exc.stopped,
    )


def is_refusal(report: Report) -> bool:
    """Whether ``report`` is a refusal_report (renderers show it in a few lines)."""
    return REFUSED_NOTE in report.notes and not report.layers
