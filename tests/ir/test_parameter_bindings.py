"""Selection of training parameters by default and by glob; the recorder a loader fills."""

from __future__ import annotations

import numpy as np

from stabaudit.ir.parameters import (
    BindingRecorder,
    Origin,
    SourceParameter,
    Term,
    select,
    unmatched,
)


def _p(name: str, default: bool = True) -> SourceParameter:
    return SourceParameter(name=name, shape=(2,), origin=Origin.INITIALIZER, default=default)


def test_defaults_globs_and_unmatched_globs() -> None:
    params = [_p("conv.weight"), _p("conv.bias"), _p("/Constant_output_0", default=False)]
    assert [p.name for p in select(params, None)] == ["conv.weight", "conv.bias"]
    assert [p.name for p in select(params, ("*.weight", "/Const*"))] == ["conv.weight", "/Constant_output_0"]
    assert unmatched(params, ("conv.*", "fc.*")) == ["fc.*"]


def test_recorder_keeps_bound_parameters_of_kept_nodes_and_upgrades_defaults() -> None:
    rec = BindingRecorder()
    rec.parameter("s", np.ones(3), Origin.INITIALIZER, "Mul 'm' scale", default=False)
    rec.parameter("s", np.ones(3), Origin.INITIALIZER, "Conv 'c' bias", default=True)  # shared: a bias too
    rec.parameter("dead", np.ones(3), Origin.INITIALIZER, "Conv 'd' weight", default=True)
    rec.bind("m", "scale", [Term(parameter="s")])
    rec.bind("d", "weight", [Term(parameter="dead")])
    out = rec.finish({"m"})
    assert [p.name for p in out.parameters] == ["s"] and out.parameters[0].default
    assert [b.node for b in out.bindings] == ["m"] and set(out.values) == {"s"}
