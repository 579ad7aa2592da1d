"""The checks' three-way status, thresholds and severities against hand-built evidence."""

from __future__ import annotations

import math

import pytest

from stabaudit.checks import CHECKS, CheckPolicy, Evidence, canonical_threshold, run_checks
from stabaudit.errors import UsageError
from stabaudit.report.model import (
    Equivalence,
    GlobalLipschitz,
    Layer,
    LayerLipschitz,
    Severity,
    Status,
)


def layer(
    name: str,
    lower: float | None,
    upper: float | None,
    *,
    certified: bool = True,
    op: str = "Linear",
) -> Layer:
    return Layer(
        name=name,
        op=op,
        source_op=op,
        lipschitz=LayerLipschitz(
            upper=upper,
            lower=lower,
            method="svd",
            certified=certified,
            lower_method="svd",
            lower_certified=True,
        ),
    )


def evidence(
    lower: float | None,
    upper: float | None,
    *,
    layers=(),
    certified=True,
    depth=2,
    nonfinite=None,
    baseline=None,
) -> Evidence:
    return Evidence(
        layers=tuple(layers),
        lipschitz=GlobalLipschitz(
            upper=upper,
            lower=lower,
            upper_method="product",
            lower_method="search",
            certified=certified,
            witness=None,
        ),
        product_upper=upper,
        depth=depth,
        nonfinite=nonfinite or {},
        equivalence=Equivalence(
            reference="onnxruntime", max_abs_diff=1e-7, tolerance=1e-4, passed=True, samples=4
        ),
        operators=5,
        baseline=baseline,
    )


def by_id(findings, check_id):
    return next(f for f in findings if f.id == check_id)


@pytest.mark.parametrize(
    ("lower", "upper", "threshold", "status"),
    [
        (0.5, 0.9, 1.0, Status.PASS),
        (1.5, 3.0, 1.0, Status.FAIL),
        (0.5, 3.0, 1.0, Status.INCONCLUSIVE),
        (None, 3.0, 1.0, Status.INCONCLUSIVE),
        (2.0, 4.0, 4.0, Status.PASS),  # the upper bound equal to the threshold proves it
    ],
)
def test_sa101_three_way_status(lower, upper, threshold, status):
    f = by_id(
        run_checks(evidence(lower, upper), CheckPolicy(thresholds={"lipschitz": threshold})),
        "SA101",
    )
    assert f.status is status
    assert f.threshold == threshold
    assert f.value == {"lower": lower, "upper": upper}


def test_sa101_estimate_upper_never_passes():
    f = by_id(run_checks(evidence(0.1, 0.5, certified=False), CheckPolicy()), "SA101")
    assert f.status is Status.INCONCLUSIVE


def test_user_threshold_makes_check_an_error_and_default_is_info():
    default = by_id(run_checks(evidence(2, 3), CheckPolicy()), "SA101")
    assert default.severity is Severity.INFO and default.status is Status.FAIL
    assert default.threshold == 1.0
    # the first-run advice: the threshold the certified upper bound 3 passes today
    assert "would pass with --threshold lipschitz=3 (the certified upper bound)" in default.message
    set_ = by_id(run_checks(evidence(2, 3), CheckPolicy(thresholds={"lipschitz": 1.5})), "SA101")
    assert set_.severity is Severity.ERROR
    over = by_id(
        run_checks(
            evidence(2, 3),
            CheckPolicy(thresholds={"lipschitz": 1.5}, severities={"SA101": Severity.INFO}),
        ),
        "SA101",
    )
    assert over.severity is Severity.INFO


def test_sa102_lists_layers_and_uses_certified_lower_bounds():
    layers = [layer("a", 0.5, 0.8), layer("b", 1.2, 1.3), layer("c", 0.9, 1.1)]
    f = by_id(run_checks(evidence(1, 2, layers=layers), CheckPolicy()), "SA102")
    assert f.status is Status.FAIL and "b" in f.message and f.value == pytest.approx(1.3)
    f2 = by_id(run_checks(evidence(1, 2, layers=[layers[0], layers[2]]), CheckPolicy()), "SA102")
    assert f2.status is Status.INCONCLUSIVE and "c" in f2.message
    f3 = by_id(run_checks(evidence(1, 2, layers=[layers[0]]), CheckPolicy()), "SA102")
    assert f3.status is Status.PASS
    f4 = by_id(
        run_checks(evidence(1, 2, layers=[layer("d", 0.5, 0.8, certified=False)]), CheckPolicy()),
        "SA102",
    )
    assert f4.status is Status.INCONCLUSIVE


def test_sa103_exponent_from_composed_bound_over_depth():
    f = by_id(run_checks(evidence(math.e**2, math.e**4, depth=2), CheckPolicy()), "SA103")
    assert f.value["upper"] == pytest.approx(2.0) and f.value["lower"] == pytest.approx(1.0)
    assert f.status is Status.FAIL
    f2 = by_id(run_checks(evidence(0.1, 0.5, depth=3), CheckPolicy()), "SA103")
    assert f2.status is Status.PASS and f2.value["upper"] == pytest.approx(math.log(0.5) / 3)
    f3 = by_id(run_checks(evidence(0.1, 0.5, depth=0), CheckPolicy()), "SA103")
    assert f3.status is Status.SKIPPED


def test_sa402_fails_on_nonfinite_weights():
    f = by_id(run_checks(evidence(1, 2, nonfinite={"fc1": 3, "fc2": 0}), CheckPolicy()), "SA402")
    assert f.status is Status.FAIL and f.value == 3 and "fc1" in f.message
    assert f.severity is Severity.ERROR
    assert by_id(run_checks(evidence(1, 2), CheckPolicy()), "SA402").status is Status.PASS


def test_threshold_names_and_ids_resolve():
    assert canonical_threshold("SA101") == "lipschitz"
    assert canonical_threshold("lipschitz.layer") == "layer_lipschitz"
    with pytest.raises(UsageError, match="unknown threshold"):
        canonical_threshold("lipschitzz")


def test_every_check_is_documented_and_ids_are_stable():
    assert sorted(CHECKS) == [
        "SA001",
        "SA002",
        "SA101",
        "SA102",
        "SA103",
        "SA201",
        "SA202",
        "SA301",
        "SA302",
        "SA303",
        "SA401",
        "SA402",
        "SA501",
        "SA502",
        "SA503",
        "SA601",
        "SA602",
        "SA901",
        "SA902",
    ]
    for key in CHECKS:
        spec = CHECKS.get(key)
        assert len(spec.doc.splitlines()) >= 3, key


def test_sa001_baseline_regressions_and_improvements():
    base = {
        "lipschitz": {"upper": 10.0, "certified": True},
        "layers": [
            {"name": "a", "lipschitz": {"upper": 2.0, "certified": True}},
            {"name": "b", "lipschitz": {"upper": 4.0, "certified": True}},
        ],
    }
    layers = [layer("a", 1.0, 2.5), layer("b", 1.0, 3.0)]
    f = by_id(run_checks(evidence(1, 10.5, layers=layers, baseline=base), CheckPolicy()), "SA001")
    assert f.status is Status.FAIL and f.severity is Severity.ERROR
    assert "regression" in f.message and "layer a: 2 -> 2.5 (+25.0%)" in f.message
    assert "improvements: layer b" in f.message and f.locations == ("a",)
    assert f.value == {"regressions": 1, "improvements": 1}
    ok = by_id(run_checks(evidence(1, 10.9, baseline=base), CheckPolicy()), "SA001")
    assert ok.status is Status.PASS
    loose = by_id(
        run_checks(
            evidence(1, 10.9, baseline=base), CheckPolicy(thresholds={"max_regression": 0.05})
        ),
        "SA001",
    )
    assert loose.status is Status.FAIL and "global: 10 -> 10.9" in loose.message
    lost = by_id(
        run_checks(evidence(1, 10.0, certified=False, baseline=base), CheckPolicy()), "SA001"
    )
    assert lost.status is Status.FAIL and "lost" in lost.message
    assert by_id(run_checks(evidence(1, 2), CheckPolicy()), "SA001").status is Status.SKIPPED


def test_sa302_local_bound_statuses():
    from dataclasses import replace

    from stabaudit.checks.base import LocalEvidence

    ev = evidence(1, 2)
    assert by_id(run_checks(ev, CheckPolicy()), "SA302").status is Status.SKIPPED
    local = LocalEvidence(upper=0.5, eps=0.01, norm="linf", samples=3)
    f = by_id(run_checks(replace(ev, local=local), CheckPolicy()), "SA302")
    assert f.status is Status.PASS and f.value == {
        "upper": 0.5,
        "local_analysis": 0.5,
        "eps": 0.01,
        "norm": "linf",
        "samples": 3,
    }
    loose = replace(local, upper=5.0)
    f = by_id(
        run_checks(replace(evidence(1, 10), local=loose), CheckPolicy(thresholds={"lipschitz": 2})),
        "SA302",
    )
    # K_max is inherited as the value, but only SA302's own key makes it an error
    assert f.status is Status.INCONCLUSIVE and f.severity is Severity.INFO and f.threshold == 2
    assert "would pass with --threshold local_lipschitz=5 " in f.message
    own = CheckPolicy(thresholds={"lipschitz": 2, "local_lipschitz": 6})
    f = by_id(run_checks(replace(evidence(1, 10), local=loose), own), "SA302")
    assert f.status is Status.PASS and f.severity is Severity.ERROR and f.threshold == 6
    # the global certified bound K = 2 holds on every ball: it replaces a looser local analysis
    f = by_id(run_checks(replace(ev, local=loose), CheckPolicy(thresholds={"lipschitz": 2})), "SA302")
    assert f.status is Status.PASS and f.value["upper"] == 2 and f.value["local_analysis"] == 5.0
    assert "global certified bound" in f.message
    f = by_id(
        run_checks(replace(ev, local=replace(local, upper=None, message="x")), CheckPolicy()),
        "SA302",
    )
    assert f.status is Status.SKIPPED


def test_sa101_states_the_additive_term_of_branch_switches():
    from dataclasses import replace

    from stabaudit.report.model import Additive

    def with_additive(value, certified):
        ev = evidence(0.4, 0.5)
        add = Additive(value=value, certified=certified, sources=("act",), method="branch-switch-jumps")
        return replace(ev, lipschitz=replace(ev.lipschitz, additive=add))

    f = by_id(run_checks(with_additive(1.65e-8, True), CheckPolicy()), "SA101")
    assert f.status is Status.PASS
    assert f.value == {"lower": 0.4, "upper": 0.5, "additive": 1.65e-8}
    assert "||F(x) - F(y)|| <= K ||x - y|| + 1.65e-08" in f.message and "act" in f.message
    # without a finite certified additive term the executed model is not proved: no pass
    g = by_id(run_checks(with_additive(None, False), CheckPolicy()), "SA101")
    assert g.status is Status.INCONCLUSIVE
    assert "smooth part only" in g.message and "not certified" in g.message
    # a fail is still a fail (the lower bound is about the smooth part, below K)
    h = by_id(run_checks(with_additive(1e-3, True), CheckPolicy(thresholds={"lipschitz": 0.3})), "SA101")
    assert h.status is Status.FAIL
    # no branch switch: the value and the message are those of before
    plain = by_id(run_checks(evidence(0.4, 0.5), CheckPolicy()), "SA101")
    assert plain.value == {"lower": 0.4, "upper": 0.5} and "additive" not in plain.message


def test_sa302_states_the_additive_term_of_branch_switches():
    from dataclasses import replace

    from stabaudit.checks.base import LocalEvidence
    from stabaudit.report.model import Additive

    ev = evidence(1, 2)
    local = LocalEvidence(upper=0.5, eps=0.01, norm="linf", samples=3)

    def run(value, certified):
        add = Additive(value=value, certified=certified, sources=("act",), method="branch-switch-jumps")
        lip = replace(ev.lipschitz, additive=add)
        return by_id(run_checks(replace(ev, local=local, lipschitz=lip), CheckPolicy()), "SA302")

    f = run(2e-9, True)
    assert f.status is Status.PASS and f.value["additive"] == 2e-9
    assert "||F(x) - F(y)|| <= L ||x - y|| + 2e-09" in f.message and "act" in f.message
    g = run(None, False)
    assert g.status is Status.INCONCLUSIVE and "not certified" in g.message


def test_one_threshold_makes_only_its_own_check_an_error():
    from dataclasses import replace

    from stabaudit.checks.base import LocalEvidence

    layers = [layer("a", 1.2, 2.0), layer("b", 1.0, 3.0)]
    local = LocalEvidence(upper=5.0, eps=0.01, norm="linf", samples=2)
    ev = replace(evidence(2, 6, layers=layers), local=local)
    defaults = {f.id: f for f in run_checks(ev, CheckPolicy())}
    for cid in ("SA101", "SA102", "SA103", "SA302"):
        assert defaults[cid].severity is Severity.INFO, cid
        assert defaults[cid].status is not Status.PASS, cid
    assert defaults["SA101"].status is Status.FAIL  # K >= 2 > 1: the status stays honest
    assert "would pass with --threshold lipschitz=6 " in defaults["SA101"].message
    assert "would pass with --threshold layer_lipschitz=3 " in defaults["SA102"].message
    # Lambda upper = log(6) / 2 = 0.895879734..., rounded up to 6 digits so that it does pass
    assert "would pass with --threshold exponent=0.89588 " in defaults["SA103"].message
    assert "would pass with --threshold local_lipschitz=5 " in defaults["SA302"].message
    set_ = {f.id: f for f in run_checks(ev, CheckPolicy(thresholds={"lipschitz": 50}))}
    promoted = sorted(cid for cid in set_ if set_[cid].severity is not defaults[cid].severity)
    assert promoted == ["SA101"]
    assert set_["SA101"].severity is Severity.ERROR and set_["SA101"].status is Status.PASS
    assert set_["SA302"].threshold == 50 and set_["SA302"].status is Status.PASS  # inherits K_max
    assert "would pass" not in set_["SA101"].message


def test_fmt_up_never_rounds_below():
    import math

    from stabaudit.checks.base import fmt_up

    assert fmt_up(3.0) == "3" and fmt_up(0.0) == "0"
    assert fmt_up(339.65449) == "339.655" and fmt_up(-0.0123456789) == "-0.0123456"
    for x in (math.pi, 1e-9 / 3, 2.0 / 3, 12345678.9, -math.e, math.log(6) / 2):
        assert float(fmt_up(x)) >= x and float(fmt_up(x)) <= x + abs(x) * 1e-5
