"""SA101-SA103 over an audit domain: the domain bracket decides, and the messages say so."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from stabaudit.checks import CheckPolicy, run_checks
from stabaudit.report.model import DomainInfo, GlobalLipschitz, LayerLipschitz, Status
from tests.checks.test_checks import by_id, evidence, layer

BOX = DomainInfo(kind="box", description="the box 0 <= x <= 1", low=0.0, high=1.0)


def _domain(lower: float | None, upper: float | None, *, certified: bool = True) -> GlobalLipschitz:
    return GlobalLipschitz(upper=upper, lower=lower, upper_method="domain-composition",
                           lower_method="projected pair ascent", certified=certified, witness=None, domain=BOX)


@pytest.mark.parametrize(
    ("domain", "status"),
    [
        (_domain(0.5, 0.9), Status.PASS),  # the domain bound proves K_D <= 1 where the global one cannot
        (_domain(1.5, 2.0), Status.FAIL),  # a pair in D proves K_D > 1
        (_domain(0.5, 2.0), Status.INCONCLUSIVE),
        (_domain(0.5, 0.9, certified=False), Status.INCONCLUSIVE),  # an estimate never passes
        (_domain(None, None), Status.INCONCLUSIVE),
    ],
)
def test_sa101_judges_over_the_domain(domain: GlobalLipschitz, status: Status) -> None:
    # globally the bracket [3, 50] fails K_max = 1; over D the domain bracket decides
    ev = replace(evidence(3.0, 50.0), domain_lipschitz=domain)
    f = by_id(run_checks(ev, CheckPolicy(thresholds={"lipschitz": 1.0})), "SA101")
    assert f.status is status
    assert f.value["over"] == "box"
    assert f.message.startswith("over the domain (the box 0 <= x <= 1): ")


def test_sa101_over_the_domain_never_looser_than_the_global_bound() -> None:
    ev = replace(evidence(0.1, 0.8), domain_lipschitz=_domain(0.2, 5.0))
    f = by_id(run_checks(ev, CheckPolicy(thresholds={"lipschitz": 1.0})), "SA101")
    assert f.status is Status.PASS and f.value["upper"] == 0.8 and f.value["lower"] == 0.2


def test_sa102_uses_the_layer_bounds_on_the_domain_ranges_and_cannot_fail_by_global_lowers() -> None:
    tight = replace(layer("act", 2.0, 2.0, op="Sigmoid"), lipschitz=LayerLipschitz(
        upper=0.25, lower=0.25, method="activation-constant", certified=True, lower_method="x",
        lower_certified=True, domain_upper=0.05))
    loose = layer("fc", 3.0, 3.0)
    ev = evidence(1.0, 2.0, layers=(tight, loose))
    policy = CheckPolicy(thresholds={"layer_lipschitz": 1.0})
    assert by_id(run_checks(ev, policy), "SA102").status is Status.FAIL
    over = by_id(run_checks(replace(ev, domain_lipschitz=_domain(0.5, 0.9)), policy), "SA102")
    assert over.status is Status.INCONCLUSIVE and over.locations == ("fc",)
    assert over.message.startswith("over the domain")
    only = replace(ev, layers=(tight,), domain_lipschitz=_domain(0.01, 0.04))
    f = by_id(run_checks(only, CheckPolicy(thresholds={"layer_lipschitz": 0.1})), "SA102")
    assert f.status is Status.PASS and f.value == 0.05


def test_sa103_uses_the_domain_product() -> None:
    ev = replace(evidence(2.0, 100.0, depth=2), domain_lipschitz=_domain(0.5, 0.9), domain_product_upper=0.81)
    f = by_id(run_checks(ev, CheckPolicy()), "SA103")
    assert f.value["upper"] == pytest.approx(math.log(0.81) / 2)
    assert f.value["lower"] == pytest.approx(math.log(0.5) / 2)
    assert f.status is Status.PASS
