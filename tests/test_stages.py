"""The analysis pipeline (stabaudit.stages): the stage list, its observer lines and timing keys,
and a new stage as one more entry of STAGES."""

from __future__ import annotations

from pathlib import Path

import pytest

import stabaudit.stages as stages
from stabaudit.engine import AuditRequest, audit
from stabaudit.renderers import RENDERERS, OutputFormat
from stabaudit.stages import STAGES, AnalysisState, Stage

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_stage_order():
    assert [s.name for s in STAGES] == [
        "check_device",
        "load",
        "equivalence",
        "layer_bounds",
        "jumps",
        "global_bound",
        "global_methods",
        "samples",
        "sample_evidence",
        "local_bounds",
        "training",
        "residual",
        "lower_bound_search",
        "global_lipschitz",
        "domain_bounds",
        "domain_witness",
    ]
    timed = [s.timing for s in STAGES if s.timing is not None]
    assert len(set(timed)) == len(timed) and "total" not in timed


def test_observer_lines_and_timings_follow_the_stages_that_ran(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    lines: list[str] = []
    report = audit(
        AuditRequest(path=SAMPLES / "mlp.onnx", method="product", lower_budget_s=0.2),
        observer=lines.append,
    )
    assert lines == [
        "loading",
        "equivalence",
        "per-layer bounds",
        "global bound",
        "residual blocks",
        "lower bound search",
    ]
    assert list(report.timings) == [
        "load", "equivalence", "layer_bounds", "composition", "residual", "lower_bound", "total",
        "checks",
    ]


def test_a_new_stage_is_one_entry(monkeypatch):
    """A stage inserted after the per-layer bounds sees their evidence and not the later stages',
    says its line and is timed under its key; the report is otherwise the same, byte for byte."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    request = AuditRequest(path=SAMPLES / "mlp.onnx", method="product", lower_budget_s=0.2)
    plain = RENDERERS.get(OutputFormat.JSON)(audit(request))

    seen: list[tuple[int, bool]] = []

    def ranges(request: AuditRequest, ev: AnalysisState) -> None:
        seen.append((len(ev.op_bounds), hasattr(ev, "comp")))

    at = next(i for i, s in enumerate(STAGES) if s.name == "layer_bounds") + 1
    extra = Stage(ranges, "ranges", "ranges", when=lambda request, ev: True)
    monkeypatch.setattr(stages, "STAGES", (*STAGES[:at], extra, *STAGES[at:]))
    lines: list[str] = []
    assert RENDERERS.get(OutputFormat.JSON)(audit(request, observer=lines.append)) == plain
    assert lines.index("ranges") == lines.index("per-layer bounds") + 1
    assert len(seen) == 1 and seen[0][0] > 0 and not seen[0][1]

    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    keys = list(audit(request).timings)
    assert keys.index("ranges") == keys.index("layer_bounds") + 1


def test_the_local_analyses_reuse_the_bounds_of_the_nodes_folding_kept() -> None:
    """SA302 and the domain's interval Jacobian run on the graph as loaded; its nodes that the
    folding passes kept as they are reuse their per-layer bounds, the folded ones are bounded again."""
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import RuleContext
    from stabaudit.ir import ops as O
    from stabaudit.ir.passes import fold_affine, merge_linear_maps
    from stabaudit.loaders import load_model

    loaded = load_model(SAMPLES / "resnet.onnx").graph
    folded = merge_linear_maps(fold_affine(loaded))
    op_bounds = {n.output: bound_node(n, RuleContext(input_shapes=tuple(folded.shapes[i] for i in n.inputs),
                                                     output_shape=folded.shapes[n.output])) for n in folded.nodes}
    shared = stages._shared_bounds(loaded, folded, op_bounds)
    convs = [n for n in loaded.nodes if isinstance(n.op, O.Conv)]
    # the stem conv has no BatchNorm after it: kept, its bound shared; the others merged with theirs
    assert convs[0].output in shared and shared[convs[0].output] is op_bounds[convs[0].output]
    assert all(n.output not in shared for n in convs[1:])
    assert all(shared[k] is op_bounds[k] for k in shared)
    for out, ob in shared.items():
        node = next(n for n in loaded.nodes if n.output == out)
        fresh = bound_node(node, RuleContext(input_shapes=tuple(loaded.shapes[i] for i in node.inputs),
                                             output_shape=loaded.shapes[out]))
        assert ob.upper.value == fresh.upper.value  # the same operator at the same shapes


def test_sa302_on_a_graph_it_refuses_asks_for_no_per_layer_bounds() -> None:
    # a model the local bounds have no rule for (here Gelu) is refused before the bounds of
    # the graph as loaded are computed: a provider that fails if called is never called
    import numpy as np

    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    rng = np.random.default_rng(0)
    nodes = (Node(name="l", op=O.Linear(weight=rng.normal(size=(4, 3))), inputs=("x",), output="h"),
             Node(name="s", op=O.Gelu(), inputs=("h",), output="y"))
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",), nodes=nodes))
    request = AuditRequest(path=SAMPLES / "mlp.onnx", lower_budget_s=0.2)

    def never() -> dict:
        raise AssertionError("the per-layer bounds were asked for")

    found = stages._local_evidence(g, rng.normal(size=(2, 1, 3)), request, 1 << 30, never)
    assert found.upper is None and found.samples == 2
    assert found.message == "unsupported operators: Gelu (x1) [SA901]"
    # a graph with rules calls the provider once and reads its bounds
    calls: list[int] = []

    def given() -> dict:
        calls.append(1)
        return {}

    plain = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("h",), nodes=nodes[:1]))
    ok = stages._local_evidence(plain, rng.normal(size=(2, 1, 3)), request, 1 << 30, given)
    assert calls == [1] and ok.upper is not None
    assert ok.upper == pytest.approx(float(np.linalg.norm(nodes[0].op.weight, 2)), rel=1e-6)


def test_the_interval_jacobian_runs_only_when_the_stage_budget_buys_it() -> None:
    # the interval Jacobian is counted from the shapes (per ball), dense or on receptive fields,
    # and run only within twice what the stage has left of its part of --budget
    import numpy as np

    from stabaudit.analyses.local import dense_cost
    from stabaudit.analyses.patch_jacobian import MAX_PATCH_ENTRIES
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    rng = np.random.default_rng(0)
    conv = O.Conv(weight=rng.normal(size=(8, 3, 3, 3)), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    pool = O.MaxPool(kernel=(4, 4), strides=(4, 4), pads=(0, 0, 0, 0), dilations=(1, 1))
    nodes = (Node(name="c", op=conv, inputs=("x",), output="c"), Node(name="r", op=O.Relu(), inputs=("c",), output="r"),
             Node(name="p", op=pool, inputs=("r",), output="p"),
             Node(name="f", op=O.Reshape(shape=(1, 8 * 12 * 12)), inputs=("p",), output="f"),
             Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 8 * 12 * 12))), inputs=("f",), output="y"))
    g = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3, 48, 48)),), outputs=("y",), nodes=nodes))
    one = stages._jacobian_cost(g, MAX_PATCH_ENTRIES)
    assert one > 0
    assert stages._jacobian_unbought(g, MAX_PATCH_ENTRIES, 4, 2 * one) == ""  # 4 balls within twice 2 balls' cost
    why = stages._jacobian_unbought(g, MAX_PATCH_ENTRIES, 4, 1.9 * one)
    assert why.startswith(f"the interval Jacobian on receptive fields is planned at {4 * one:.3g} s for 4 ball(s)")
    assert "a larger --budget runs it" in why
    assert stages._jacobian_cost(g, 10) == 0.0  # no patch fits: it would not run at all
    # a small one runs densely: 2 n_in per multiply-accumulate of the conv and the dense layer, 4 n_in
    # per entry of the other nodes
    small = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3, 8, 8)),), outputs=("y",), nodes=(
        nodes[0], nodes[1], Node(name="f", op=O.Reshape(shape=(1, 8 * 8 * 8)), inputs=("r",), output="f"),
        Node(name="fc", op=O.Linear(weight=rng.normal(size=(4, 8 * 8 * 8))), inputs=("f",), output="y"))))
    n_in = 3 * 8 * 8
    ops = 2 * n_in * (8 * 8 * 8 * 27 + 4 * 512) + 4 * n_in * (8 * 8 * 8) * 2
    assert stages._jacobian_cost(small, MAX_PATCH_ENTRIES) == dense_cost(small, small.shapes) == pytest.approx(ops / 2e9)
    why = stages._jacobian_unbought(small, MAX_PATCH_ENTRIES, 2, 0.9 * dense_cost(small, small.shapes))
    assert why.startswith("the interval Jacobian (dense) is planned at")


def test_the_lower_searches_read_bounds_of_the_graph_as_loaded() -> None:
    # the float64 error model runs the graph as loaded: a node the folding kept takes its bound
    # from the report's layers, a folded one (a Conv and its BatchNorm) gets its own rule's bound,
    # never the folded product's (which need not bound the BatchNorm alone); computed once
    from types import SimpleNamespace

    import numpy as np

    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec
    from stabaudit.ir.passes import fold_affine

    rng = np.random.default_rng(0)
    conv = O.Conv(weight=rng.normal(size=(4, 2, 3, 3)) * 0.01, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    bn = O.Affine(scale=np.full((1, 4, 1, 1), 50.0), shift=np.zeros((1, 4, 1, 1)))
    nodes = (Node(name="c", op=conv, inputs=("x",), output="c"), Node(name="bn", op=bn, inputs=("c",), output="b"),
             Node(name="r", op=O.Relu(), inputs=("b",), output="r"),
             Node(name="f", op=O.Reshape(shape=(1, 4 * 6 * 6)), inputs=("r",), output="f"),
             Node(name="l", op=O.Linear(weight=rng.normal(size=(3, 144))), inputs=("f",), output="y"))
    loaded = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 2, 6, 6)),), outputs=("y",), nodes=nodes))
    folded = fold_affine(loaded)
    assert len(folded.nodes) == len(loaded.nodes) - 1
    op_bounds = rule_bounds(folded)
    ev = SimpleNamespace(loaded=SimpleNamespace(graph=loaded), graph=folded, op_bounds=op_bounds, loaded_bounds=None)
    got = stages._loaded_bounds(ev)  # type: ignore[arg-type]
    assert got["r"] is op_bounds["r"] and got["y"] is op_bounds["y"]
    own = rule_bounds(loaded, only=frozenset({"c", "b"}))
    assert got["b"].upper.value == own["b"].upper.value == 50.0
    assert op_bounds["b"].upper.value < 50.0  # the folded product's: no bound of the BatchNorm alone
    assert got["c"].upper.value == own["c"].upper.value
    assert stages._loaded_bounds(ev) is got  # once


def test_the_domains_witness_raises_the_global_lower_bound() -> None:
    # a pair of the domain is a pair of the input space: where the domain's search found the larger
    # quotient, the global bracket takes it (and its witness); never the other way round, and a
    # domain lower bound above the global certified upper bound is a bug, not a report
    from dataclasses import replace
    from types import SimpleNamespace

    import pytest

    from stabaudit.errors import InternalError
    from stabaudit.report.model import GlobalLipschitz, Witness

    pair = Witness(x=(0.0, 1.0), y=(0.0, 1.5), quotient=12.5)
    whole = GlobalLipschitz(upper=None, lower=0.5, upper_method="product", lower_method="search", certified=False,
                            witness=Witness(x=(3.0, 3.0), y=(3.0, 3.1), quotient=0.5))
    dom = GlobalLipschitz(upper=40.0, lower=12.5, upper_method="ranges", lower_method="domain search",
                          certified=True, witness=pair)
    request = SimpleNamespace(path="m.onnx")
    ev = SimpleNamespace(lipschitz=whole, domain_lipschitz=dom)
    stages.domain_witness(request, ev)  # type: ignore[arg-type]
    assert ev.lipschitz.lower == 12.5 and ev.lipschitz.witness is pair
    assert ev.lipschitz.lower_method.startswith("domain search (the domain's witness")
    assert ev.lipschitz.upper is None and ev.lipschitz.upper_method == "product"  # the rest unchanged
    higher = replace(whole, lower=20.0)
    ev = SimpleNamespace(lipschitz=higher, domain_lipschitz=dom)
    stages.domain_witness(request, ev)  # type: ignore[arg-type]
    assert ev.lipschitz is higher
    ev = SimpleNamespace(lipschitz=replace(whole, upper=10.0, certified=True), domain_lipschitz=dom)
    with pytest.raises(InternalError, match="exceeds the certified global upper bound"):
        stages.domain_witness(request, ev)  # type: ignore[arg-type]


def test_the_error_model_reads_shifted_nodes_bounds_and_quick_ones_for_scaled_nodes() -> None:
    # a MatMul whose bias add was folded into it has the same weight as the folded node: its bound
    # is the folded node's; a conv scaled by the BatchNorm folded into it gets its rule's quick
    # bound (no circulant certificate) for the lower searches' error model, computed once, and the
    # precise bounds of the graph as loaded replace them once a stage has asked for those
    from types import SimpleNamespace

    import numpy as np

    from stabaudit.analyses.composition import rule_bounds
    from stabaudit.bounds.base import BoundSettings
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec
    from stabaudit.ir.passes import fold_affine

    rng = np.random.default_rng(0)
    conv = O.Conv(weight=rng.normal(size=(8, 3, 3, 3)), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    bn = O.Affine(scale=rng.uniform(0.5, 2.0, size=(1, 8, 1, 1)), shift=rng.normal(size=(1, 8, 1, 1)))
    lin = O.Linear(weight=rng.normal(size=(5, 8 * 16 * 16)))
    bias = O.Affine(shift=rng.normal(size=(5,)))
    nodes = (Node(name="c", op=conv, inputs=("x",), output="c"), Node(name="bn", op=bn, inputs=("c",), output="b"),
             Node(name="r", op=O.Relu(), inputs=("b",), output="r"),
             Node(name="f", op=O.Reshape(shape=(1, 8 * 16 * 16)), inputs=("r",), output="f"),
             Node(name="l", op=lin, inputs=("f",), output="h"), Node(name="a", op=bias, inputs=("h",), output="y"))
    loaded = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3, 16, 16)),), outputs=("y",), nodes=nodes))
    folded = fold_affine(loaded)
    assert len(folded.nodes) == len(loaded.nodes) - 2
    op_bounds = rule_bounds(folded)
    shared = stages._shared_bounds(loaded, folded, op_bounds)
    assert shared["h"] is op_bounds["y"]  # the MatMul: the folded node with its bias
    assert "c" not in shared  # the conv was scaled
    ev = SimpleNamespace(loaded=SimpleNamespace(graph=loaded), graph=folded, op_bounds=op_bounds, loaded_bounds=None,
                         quick_loaded_bounds=None)
    quick = stages._error_model_bounds(ev)  # type: ignore[arg-type]
    own_quick = rule_bounds(loaded, BoundSettings(quick=True), only=frozenset({"c"}))["c"]
    own = rule_bounds(loaded, only=frozenset({"c"}))["c"]
    assert quick["c"].upper.method in ("unfolded-coverage", "tap-sum") and quick["c"].lower is None
    assert quick["c"].upper.value == own_quick.upper.value >= own.upper.value
    assert quick["h"] is op_bounds["y"] and quick["r"] is op_bounds["r"]
    assert stages._error_model_bounds(ev) is quick  # once
    precise = stages._loaded_bounds(ev)  # type: ignore[arg-type]
    assert precise["c"].upper.value == own.upper.value
    assert stages._error_model_bounds(ev) is precise  # type: ignore[arg-type]


def test_the_domain_asks_for_no_bounds_where_the_interval_jacobian_has_no_rule() -> None:
    # the interval Jacobian over the domain tests its operators before it asks for the per-layer
    # bounds of the graph as loaded: never with a Gelu, once (whatever the boxes) without one
    import numpy as np

    from stabaudit.analyses.domain_bound import domain_boxes, jacobian_bound
    from stabaudit.analyses.samples import BallDomain
    from stabaudit.ir import ops as O
    from stabaudit.ir.executor import with_shapes
    from stabaudit.ir.graph import Graph, Node, TensorSpec

    w = np.arange(12.0).reshape(4, 3) / 10
    lin = Node(name="l", op=O.Linear(weight=w), inputs=("x",), output="h")
    plain = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("h",), nodes=(lin,)))
    gelu = with_shapes(Graph(inputs=(TensorSpec(name="x", shape=(1, 3)),), outputs=("y",),
                             nodes=(lin, Node(name="g", op=O.Gelu(), inputs=("h",), output="y"))))
    points = np.array([[[0.1, 0.2, 0.3]], [[-0.2, 0.0, 0.4]]])

    def never() -> dict:
        raise AssertionError("the per-layer bounds were asked for")

    assert jacobian_bound(gelu, domain_boxes(gelu, BallDomain(eps=0.1), points), op_bounds=never) is None
    calls: list[int] = []

    def given() -> dict:
        calls.append(1)
        return {}

    found = jacobian_bound(plain, domain_boxes(plain, BallDomain(eps=0.1), points), op_bounds=given)
    assert calls == [1] and found is not None
    assert float(np.linalg.norm(w, 2)) <= found[0] <= float(np.linalg.norm(w, 2)) * (1 + 1e-6)
