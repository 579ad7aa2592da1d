"""The cost model: ``--budget`` seconds as counted units of work (steps, points, nodes), never elapsed time.

Every search and solver whose result enters a report sizes its work here, from the budget and
the problem's sizes only, so the same model, settings and seed give the same numbers on any
machine and under any load. The clock only aborts (``--timeout``: limits.check_deadline raises
AuditTimeoutError and no partial number is reported). ``--budget`` is therefore a planned
amount of work expressed in the seconds it takes on the reference machine below; a slower or
busier machine takes longer for the same result, a faster one less.

Calibration (on the reference machine: x86_64 Linux, 2 cores shared, one torch and one BLAS
thread, CPU time of the process after warm-up; docs/benchmarks.md "Cost model" has the table).
The constants are deliberately conservative: a budget second costs 0.3 to 0.7 s of CPU there.

- lower-bound search (analyses.lower): ``LOWER_MACS_PER_S`` multiply-accumulates of the graph's
  forward pass (``lower.forward_macs``, from the shapes) per budget second, plus ``LOWER_CALL_MACS`` per
  batched call (dispatch: vmap, autograd). Measured at --budget 1 / 2: sample MLP 0.61 / 0.94 s,
  sample CNN 0.73 / 1.35 s, sample ResNet 0.37 / 0.51 s, ACAS Xu N(1,1) 0.36 / 0.60 s.
- LipSDP / ECLipsE Newton steps (analyses.sdp, analyses.layerwise): a step is planned at
  ``NEWTON_STEP_OVERHEAD_S + (dim(P)^3 + (#t + 1)^3) / NEWTON_FLOPS_PER_S`` seconds (0.55, 7.4 and
  74 ms at dim(P) 96, 305 and 768); measured 0.42 ms (sample MLP), 4.2 ms (ACAS Xu N(1,1)) and
  45 ms (mnist-net 256x2).
- residual branches (analyses.residual.branch_lower): ``RESIDUAL_SHARE`` of the residual stage's
  allotment, split over the blocks, planned by the same cost models (analyses.lower, analyses.domain_lower);
  measured on the sample ResNet at the default --budget: +1.6 s of CPU without a domain (5.6 s ->
  7.2 s), +7 s over the box [0, 1] (41 s -> 48 s).
- SA401's measured parameter sensitivities (analyses.parameters): ``PARAMETER_SHARE`` of the
  sample_evidence stage's allotment in reverse passes of ``PASS_FORWARDS`` forward passes each; first fewer samples,
  then fewer power iterations per layer.
- SA202's Jacobians at the samples (analyses.residual): the block's branch-search share again, in
  points of ``QUOTIENT_FORWARDS`` forward passes plus the Krylov steps' reverse passes.
- the sample channels: ``SAMPLE_SHARE`` of the sample_evidence stage's share in float64 forward passes, one
  per sample, at least ``MIN_SAMPLES`` samples.
- exact branch and bound (analyses.exact): a node is planned at 1 / ``BB_NODES_PER_S`` = 4 ms;
  measured 2.5 to 4.7 ms (one LP and one SVD per child) on the sample MLP.
- the certified core (the equivalence check, the per-layer bounds): ``equivalence_s`` and
  ``layer_bounds_s``, charged before any stage that plans, which share what it leaves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stabaudit.ir.graph import Graph

# the planned seconds of the running stage (``ledger``): every search and solver adds the cost
# model's seconds of the work it commits to (``spend``), so the report states the planned work
# beside the time it took
_LEDGER: ContextVar[list[float] | None] = ContextVar("stabaudit_plan_ledger", default=None)


@contextmanager
def ledger() -> Iterator[list[float]]:
    """Collect the planned seconds ``spend`` records while the block runs (``[seconds]``)."""
    spent = [0.0]
    token = _LEDGER.set(spent)
    try:
        yield spent
    finally:
        _LEDGER.reset(token)


def spent() -> float:
    """The planned seconds the running ledger holds so far (0 outside one)."""
    ledger_ = _LEDGER.get()
    return ledger_[0] if ledger_ is not None else 0.0


def remaining(budget_s: float, *, since: float = 0.0) -> float:
    """What is left of ``budget_s`` once the running ledger's seconds beyond ``since`` (its value
    when the budget was given out) are taken off (0 at least)."""
    return max(float(budget_s) - (spent() - since), 0.0)


def spend(seconds: float) -> None:
    """Count ``seconds`` of planned work (the cost model's, not the clock's) against the ledger."""
    spent = _LEDGER.get()
    if spent is not None and math.isfinite(seconds) and seconds > 0.0:
        spent[0] += float(seconds)

# One split of --budget for the whole audit (engine.run_stages): the stages that plan work have
# these weights, and a stage that runs is allotted its weight over the weights of itself and the
# later stages that will run, times the budget that remains once the planned seconds of every
# stage before it are taken off. What a stage leaves unspent (a solver that converged early, a
# model without residual blocks, a stage that did not run) flows on to the later ones; a stage
# that goes beyond its allotment (a smallest plan) leaves less to them.
STAGE_WEIGHTS: dict[str, float] = {
    "global_methods": 0.7,  # LipSDP / ECLipsE Newton steps, the exact branch and bound
    "sample_evidence": 0.1,  # the sample channels' float64 passes and SA401's reverse passes
    "residual": 0.05,  # the residual branches' own lower-bound searches and SA202's Jacobians
    "lower_bound_search": 0.3,  # the global lower-bound search
    "domain_bounds": 0.7,  # certificates, branch and bound and pair search over the domain
}


def allot(remaining_s: float, weight: float, rest_weight: float) -> float:
    """A stage's planned seconds: ``weight`` / ``rest_weight`` (its own and the later running
    stages' weights) of the ``remaining_s`` of the budget (0 when nothing remains)."""
    if not (weight > 0.0 and rest_weight > 0.0):
        return 0.0
    return max(float(remaining_s), 0.0) * min(weight / rest_weight, 1.0)


LOWER_MACS_PER_S = 4e9  # lower-bound search: forward multiply-accumulates per budget second
# A convolution or a matrix product over many rows (a Linear applied to every token) of at least
# LARGE_OP_MACS multiply-accumulates per point runs LARGE_OP_SPEEDUP times faster than that in
# float64 (measured on one core: ResNet-18 at 224x224, 1.8e9 MACs in 0.10 s, 17.5 GMAC/s, 14.8 in a
# batch of 8; a ViT-S/16 with 4 blocks, 1.4e9 MACs of Linear layers over 197 tokens in 0.095 s,
# 15 GMAC/s): lower.forward_macs counts its MACs divided by it. A matrix-vector product (one row)
# stays at the counted rate: it is bound by memory traffic.
LARGE_OP_MACS = 2e7
LARGE_OP_SPEEDUP = 4.0
LOWER_CALL_MACS = 2e6  # fixed cost of one batched call of the search, in the same units
# ... or this much per node of the graph where that is more: each batched call runs every node at
# least once forward and once in reverse, whatever the batch (measured on the 2-core machine,
# vmapped, one point: 15 us a node forward and 30 us forward and reverse on an unrolled GRU of 877
# nodes and an LSTM of 1,158, where their multiply-accumulates count 2 ms; an audit of the GRU at
# --budget 2 took 60 s for 5 s planned before this term). LOWER_CALL_MACS holds for the small
# networks it was measured on (up to 16 nodes).
NODE_CALL_MACS = 1.2e5


def call_macs(nodes: int) -> float:
    """The fixed cost of one batched call on a graph of ``nodes`` nodes: the larger of
    LOWER_CALL_MACS and NODE_CALL_MACS a node, in the units of LOWER_MACS_PER_S."""
    return max(LOWER_CALL_MACS, NODE_CALL_MACS * max(int(nodes), 0))
# ... and a convolution costs CONV_POSITION_MACS more per output position (batch and spatial
# entry, all output channels together): convolutions of few channels run far below the counted
# rate (measured on one core in float64, 3x3 kernels over batches of 25,600: 2 to 4 channels on
# 5x5, 164 ns a position, 0.44 GMAC/s; 4 channels to 1 on 10x10, 282 ns, 0.13 GMAC/s; 16 to 16 on
# 16x16, 1.3 us, 1.8 GMAC/s), where wide ones reach 11 to 16 GMAC/s. 256 (64 ns at the counted
# rate, about the search's cost on its two kernel threads): a decoder of 2 to 4 to 1 channels with
# an upsampling took 7.4 s of CPU for a planned 1 s search and takes 2.0 s; the sample CNN's
# search at --budget 2 took 3.5 s for 1.9 s planned and takes 2.4 s
CONV_POSITION_MACS = 256.0
# interval Jacobians on receptive fields (analyses.patch_jacobian): multiply-accumulates and
# element operations on patch tensors per budget second
JACOBIAN_OPS_PER_S = 2e9
# reverse-mode products over batches of rows (analyses.backsub, analyses.reference_jacobian):
# multiply-accumulates per budget second, counting each row's pass through a node's weights, and
# a fixed part per linear node (its transpose built once: 0.3 ms measured). Measured on the
# 2-core machine in float64 (the ratio of the clock to the count): back-substitution 0.97 on the
# CIFAR ResNet sri_resnet_a over a 0.05 ball (8.5 s), 0.8 on ResNet-2B, 0.67 on ResNet-4B, 0.3 on
# MTCNN O-Net; reference rows 0.65, 0.9, 0.41 (the first transpose of a process also loads
# torch.func, about 1.3 s, once)
REVERSE_MACS_PER_S = 2e9
REVERSE_NODE_S = 1e-3
NEWTON_STEP_OVERHEAD_S = 4e-4  # one Newton step of the barrier method: fixed part (seconds)
NEWTON_FLOPS_PER_S = 8e9  # ... and its dim(P)^3 + (#t + 1)^3 part (flops per second)
# ECLipsE-Fast's closed form and the float64 verification of a chain certificate (plan.closed_form_s,
# plan.verify_s): measured on a seeded MLP of width 2048 and depth 4, 11.4 s and 3.7 s of one core
# (6.0e9 and 1.9e10 of these counted flops per second)
CLOSED_FORM_FLOPS_PER_S = 4e9
VERIFY_FLOPS_PER_S = 1.2e10
BB_NODES_PER_S = 250  # exact branch and bound: nodes per budget second
BB_MIN_NODES = 16  # the smallest plan of the branch and bound, whatever the budget
# the branch and bound over a box (bounds over a domain): a node's planned cost is BB_NODE_BASE_S
# plus its interval products at BB_FLOPS_PER_S (measured 40 ms a node on mnist-net 256x2, 784
# inputs: 1.6e8 multiply-adds; a box's setup about 3 nodes), at least BB_BOX_MIN_NODES a box. DOMAIN_BB_SHARE of
# the domain stage's allotment goes to it where it applies.
BB_NODE_BASE_S = 2e-3
BB_FLOPS_PER_S = 4e9
BB_BOX_MIN_NODES = 4
BB_BOX_SETUP_NODES = 3
DOMAIN_BB_SHARE = 0.3
# The domain stage's allotment (bounds over the domain): DOMAIN_CHAIN_SHARE for the certificates of
# ReLU chains (pieces, LipSDP steps), DOMAIN_BB_SHARE for the branch and bound, then
# DOMAIN_RESIDUAL_SHARE of what they leave for the residual branches' searches inside the domain's
# ranges, the rest for the pair search.
DOMAIN_CHAIN_SHARE = 0.4
DOMAIN_RESIDUAL_SHARE = 0.3
# ... and of what is left before the pair search, JACOBIAN_SHARE for the tightened ranges over each
# box and the bound around a reference Jacobian (analyses.domain_bound.jacobian_bound)
JACOBIAN_SHARE = 0.5
# ReLU chains over a domain (analyses.domain_chain): each box's share of the budget buys pieces of
# DOMAIN_PIECE_S planned seconds each (measured 0.047 s a piece on ACAS Xu N(1,1): back-substitution,
# up to DOMAIN_MAX_PATTERNS activation patterns, the interval Jacobian); an unsplit box spends its
# share on LipSDP-Neuron steps (newton_steps). The box is bisected only when the input has at most
# DOMAIN_SPLIT_MAX_INPUTS entries.
DOMAIN_PIECE_S = 0.05
DOMAIN_SPLIT_MAX_INPUTS = 16
DOMAIN_MAX_PATTERNS = 4096
# The lower-bound search keeps its smallest useful plan (32 starts, 30 rounds) beyond the budget
# up to max(SMALLEST_PLAN_FACTOR * budget, budget + slack) planned seconds, larger networks get
# fewer rounds and starts. Called by itself the slack is SMALLEST_PLAN_SLACK_S; in an audit the
# global search's slack is what remains of --budget beyond its allotment (its smallest plan may
# take the whole budget, the later stages then get less), a share's (residual branches) 0.
SMALLEST_PLAN_FACTOR = 2.0
SMALLEST_PLAN_SLACK_S = 20.0
# The pair search inside the domain (analyses.domain_lower) searches as many boxes as twice its
# budget buys; one box whose smallest plan costs at most this is searched whatever the budget (a
# small network's lower end over its domain is worth a fraction of a second of any --budget).
DOMAIN_SEARCH_FLOOR_S = 0.5
# The residual blocks' own lower-bound searches (analyses.residual.branch_lower) share this part of
# the residual stage's allotment, split evenly over the blocks (SA202's Jacobians at the samples the
# rest); over the audit domain, DOMAIN_RESIDUAL_SHARE of the domain stage's.
RESIDUAL_SHARE = 0.5
# SA401's measured values (analyses.parameters): reverse passes through the graph, each planned at
# PASS_FORWARDS forward passes of LOWER_MACS_PER_S units (backward and the double-backward step of
# the power iteration), bought with PARAMETER_SHARE of the sample_evidence stage's allotment; the smallest plan
# (one sample, one shared pass: ||J_l^T u|| of every layer for one unit u) is always run.
PARAMETER_SHARE = 0.5
PASS_FORWARDS = 3.0
# SA202's Jacobians at the samples (analyses.residual): each block's share of the budget (the same
# as its branch search's) buys points and Krylov steps; a step is a jvp and a vjp (2 reverse
# passes), a point's difference quotients QUOTIENT_FORWARDS forward passes of the block (twelve
# float64 error-bound evaluations). Fewer points first, then fewer steps, down to MIN_KRYLOV_STEPS;
# below that, no point is analysed.
QUOTIENT_FORWARDS = 60.0
MIN_KRYLOV_STEPS = 8
# The sample channels (SA301, SA303, SA401's norms, SA202's block inputs) evaluate the model in
# float64 at each sample: SAMPLE_SHARE of the sample_evidence stage's share of --budget in forward passes, at least
# MIN_SAMPLES of the samples (all when there are fewer), the first ones.
SAMPLE_SHARE = 0.5
MIN_SAMPLES = 4
# The certified core runs whatever the budget: the equivalence check (EQUIVALENCE_PASSES forward
# passes of LOWER_MACS_PER_S units) and the per-layer bounds (``layer_bounds_s``). Their cost
# model is charged first, so the stages after them share what the core leaves of --budget.
# Calibrated on the seeded ResNet-18/50 and MobileNetV2 at 224x224 and MLPs of width 512 to 2048
# (docs/benchmarks.md "Cost model"): a circulant conv certificate's counted flops
# (bounds.numerics.conv_certificate_cost) at CORE_CIRCULANT_FLOPS_PER_S, its warm power iteration
# (2 x WARM_ITERATIONS convolutions) at CORE_POWER_MACS_PER_S and CORE_GROUP_S per group; a dense
# conv certificate at CORE_DENSE_FLOPS_PER_S plus CORE_LAYER_S; a dense Linear's norm (an SVD or a
# Gram-Cholesky certificate, m n min(m, n) flops) at CORE_DENSE_FLOPS_PER_S.
EQUIVALENCE_PASSES = 4.0
CORE_CIRCULANT_FLOPS_PER_S = 1.4e11
CORE_POWER_MACS_PER_S = 8.4e9
CORE_GROUP_S = 4e-3
CORE_DENSE_FLOPS_PER_S = 1e10
CORE_LAYER_S = 0.03


def lower_units(budget_s: float) -> float:
    """The multiply-accumulates that ``budget_s`` buys for the lower-bound search (>= 0)."""
    return max(float(budget_s), 0.0) * LOWER_MACS_PER_S


def smallest_plan_units(budget_s: float, slack_s: float = SMALLEST_PLAN_SLACK_S) -> float:
    """The multiply-accumulates the lower-bound search's smallest plan may take (see
    ``SMALLEST_PLAN_FACTOR``): above the budget's own units, so that small budgets still search;
    ``slack_s`` 0 (the residual branches' searches, shares of the budget): at most
    SMALLEST_PLAN_FACTOR times their share."""
    b = max(float(budget_s), 0.0)
    return max(SMALLEST_PLAN_FACTOR * b, b + max(float(slack_s), 0.0)) * LOWER_MACS_PER_S


def closed_form_s(shapes: Sequence[tuple[int, ...]]) -> float:
    """The planned seconds of ECLipsE-Fast's closed form (``analyses.layerwise.eclipse_fast``) on
    a chain of weights of these shapes (m x n each): per layer Cholesky factors, solves and
    symmetric eigenvalues of n x n and m x m matrices, counted (m^3 + n^3 + m n (m + n)) / 2
    flops at CLOSED_FORM_FLOPS_PER_S."""
    return _chain_flops(shapes) / CLOSED_FORM_FLOPS_PER_S


def verify_s(shapes: Sequence[tuple[int, ...]]) -> float:
    """The planned seconds of one float64 verification of a chain certificate
    (``analyses.certify.verify``): the same count at VERIFY_FLOPS_PER_S."""
    return _chain_flops(shapes) / VERIFY_FLOPS_PER_S


def _chain_flops(shapes: Sequence[tuple[int, ...]]) -> float:
    total = 0.0
    for shape in shapes:
        m, n = float(shape[0]), float(shape[1]) if len(shape) > 1 else 1.0
        total += (m ** 3 + n ** 3 + m * n * (m + n)) / 2.0
    return total


def newton_step_s(size: int, t_size: int) -> float:
    """The planned seconds of one Newton step for an LMI of dimension ``size`` with ``t_size``
    multipliers."""
    return NEWTON_STEP_OVERHEAD_S + (float(size) ** 3 + float(t_size + 1) ** 3) / NEWTON_FLOPS_PER_S


def newton_steps(size: int, t_size: int, budget_s: float) -> int:
    """The Newton steps ``budget_s`` buys for an LMI of dimension ``size`` with ``t_size``
    multipliers: one when a step costs at most twice the budget (the budget's promise is
    seconds within 2x), none when it costs more or the budget is 0."""
    if not budget_s > 0.0:
        return 0
    cost = newton_step_s(size, t_size)
    steps = int(budget_s / cost)
    return steps if steps > 0 else (1 if cost <= 2.0 * budget_s else 0)


def domain_pieces(share_s: float, inputs: int) -> tuple[int, float]:
    """(the pieces a box's ``share_s`` of the budget buys, the LipSDP budget of each piece)."""
    share = max(float(share_s), 0.0)
    if inputs > DOMAIN_SPLIT_MAX_INPUTS:
        return 1, share  # one piece: its LipSDP steps are spent where they are planned
    pieces = max(1, int(share / DOMAIN_PIECE_S))
    if pieces > 1:
        spend(pieces * DOMAIN_PIECE_S)
    return pieces, min(share, DOMAIN_PIECE_S)


def bb_box_plan(budget_s: float, widths: Sequence[int], inputs: int, boxes: int) -> tuple[int, int]:
    """(how many of the ``boxes`` get the branch and bound, the nodes of each) that ``budget_s``
    buys for a ReLU chain (``analyses.exact`` with a box): a node costs BB_NODE_BASE_S plus its
    interval products, about 3 sum_k w_k w_(k-1) n multiply-adds (widths w_k, n inputs: the
    forward products carry a centre and two radii) at BB_FLOPS_PER_S, and a box BB_BOX_SETUP_NODES
    more (its ranges, its root, its seeded points). A box gets at least BB_BOX_MIN_NODES nodes;
    the first boxes get them while the budget lasts (one box when its smallest plan costs at most
    twice the budget), none when even that does not fit."""
    flops = 3.0 * inputs * sum(a * b for a, b in zip(widths[1:], widths[:-1], strict=False))
    cost = BB_NODE_BASE_S + flops / BB_FLOPS_PER_S
    budget = max(float(budget_s), 0.0)
    smallest = (BB_BOX_MIN_NODES + BB_BOX_SETUP_NODES) * cost
    run = min(max(int(boxes), 0), int(budget / smallest))
    if run == 0 and boxes > 0 and 0.0 < smallest <= 2.0 * budget:
        run = 1
    if run == 0:
        return 0, 0
    nodes = max(BB_BOX_MIN_NODES, int(budget / run / cost) - BB_BOX_SETUP_NODES)
    spend(run * (nodes + BB_BOX_SETUP_NODES) * cost)
    return run, nodes


def bb_nodes(budget_s: float) -> int:
    """The branch-and-bound nodes ``budget_s`` buys (at least ``BB_MIN_NODES``)."""
    return max(BB_MIN_NODES, int(max(float(budget_s), 0.0) * BB_NODES_PER_S))


def residual_branch_budget(budget_s: float, blocks: int) -> float:
    """The planned seconds of one residual block's branch search: ``RESIDUAL_SHARE`` of the
    residual stage's allotment split over the ``blocks`` (0 without blocks)."""
    if blocks <= 0:
        return 0.0
    return max(float(budget_s), 0.0) * RESIDUAL_SHARE / blocks


def reverse_passes(budget_s: float, forward_macs: float, call: float = LOWER_CALL_MACS) -> int:
    """The reverse-mode passes (autograd backward calls) that ``budget_s`` planned seconds buy on
    a graph whose forward pass costs ``forward_macs`` and a call ``call`` (``call_macs``; at least
    one)."""
    cost = PASS_FORWARDS * max(float(forward_macs), 1.0) + call
    return max(1, int(max(float(budget_s), 0.0) * LOWER_MACS_PER_S / cost))


def residual_points(
    budget_s: float, block_macs: float, available: int, *, dense_passes: int | None, square: bool,
    steps: int, call: float = LOWER_CALL_MACS,
) -> tuple[int, int]:
    """(points, Krylov steps) for one residual block's Jacobians at the samples (analyses.residual):
    a point costs ``dense_passes`` reverse passes (the full Jacobian) or 2 (power iteration on the
    branch and on the block) + 1 (Lanczos, ``square`` blocks) times 2 ``steps`` passes, plus its
    quotients; (0, 0) when even one point at MIN_KRYLOV_STEPS steps does not fit."""
    units = max(float(budget_s), 0.0) * LOWER_MACS_PER_S
    macs = max(float(block_macs), 1.0)

    def cost(k: int) -> float:
        passes = dense_passes if dense_passes is not None else (3 if square else 2) * 2 * k
        return (passes * PASS_FORWARDS + QUOTIENT_FORWARDS) * macs + call

    if available <= 0:
        return 0, 0
    if dense_passes is not None:
        points = min(available, int(units // cost(0)))
        spend(points * cost(0) / LOWER_MACS_PER_S)
        return points, steps
    points = min(available, int(units // cost(steps)))
    if points >= 1:
        spend(points * cost(steps) / LOWER_MACS_PER_S)
        return points, steps
    k = min(steps, int(((units - call) / macs - QUOTIENT_FORWARDS) / PASS_FORWARDS
                       / ((3 if square else 2) * 2)))
    if k < MIN_KRYLOV_STEPS:
        return 0, 0
    spend(cost(k) / LOWER_MACS_PER_S)
    return 1, k


def sample_count(budget_s: float, forward_macs: float, available: int, call: float = LOWER_CALL_MACS) -> int:
    """How many of the ``available`` samples the sample channels evaluate (the first ones), each
    a forward pass and a call (``call_macs``)."""
    units = max(float(budget_s), 0.0) * SAMPLE_SHARE * LOWER_MACS_PER_S
    each = max(float(forward_macs), 1.0) + call
    bought = int(units // each)
    count = min(max(int(available), 0), max(MIN_SAMPLES, bought))
    spend(count * each / LOWER_MACS_PER_S)
    return count


# SA401's autograd measurement (analyses.parameters): the full Jacobian of a sample for at most
# MAX_EXACT_ROWS outputs; above, POWER_ITERATIONS power iterations per layer (fewer samples are
# measured before the iterations drop below MIN_POWER_ITERATIONS)
MAX_EXACT_ROWS = 64  # outputs up to which the Jacobian is formed in full
POWER_ITERATIONS = 30
MIN_POWER_ITERATIONS = 8  # fewer samples are measured before the iterations drop below this


def measurement_plan(passes: int, outputs: int, layers: int, available: int) -> tuple[int, int | None]:
    """(samples, power iterations) that ``passes`` reverse passes buy: the full Jacobian costs
    ``outputs`` passes a sample (iterations None); power iteration costs one shared probe and
    1 + 2 k passes per layer a sample (k = 0: the shared probe alone, one pass). At least one
    sample whatever the passes; where the passes do not buy one sample's full Jacobian, the
    shared probe (``measurement_passes`` gives what a plan runs)."""
    available = max(int(available), 0)
    if available == 0:
        return 0, None
    if outputs <= MAX_EXACT_ROWS:
        if passes >= outputs:
            return min(available, passes // max(outputs, 1)), None
        return min(available, max(1, passes)), 0
    layers = max(int(layers), 1)
    samples = min(available, max(1, passes // (1 + layers * (1 + 2 * MIN_POWER_ITERATIONS))))
    per_layer = (passes // samples - 1) // layers
    return samples, min(POWER_ITERATIONS, max(0, (per_layer - 1) // 2))


def measurement_passes(samples: int, iterations: int | None, outputs: int, layers: int) -> int:
    """The reverse passes a measurement plan (``measurement_plan``) runs."""
    if iterations is None:
        return samples * outputs
    return samples * (1 + (layers * (1 + 2 * iterations) if iterations else 0))


def equivalence_s(forward_macs: float) -> float:
    """The planned seconds of the equivalence check: EQUIVALENCE_PASSES forward passes."""
    return EQUIVALENCE_PASSES * max(float(forward_macs), 0.0) / LOWER_MACS_PER_S


def layer_bounds_s(graph: Graph) -> float:
    """The planned seconds of the certified per-layer bounds of ``graph`` (shapes known): every
    Conv's and ConvTranspose's certificate by the method it will take, and its warm-started power
    iteration for the lower end; every Linear's dense norm. Other operators' bounds are closed forms (not counted)."""
    from stabaudit.bounds.conv import WARM_ITERATIONS
    from stabaudit.bounds.numerics import conv_certificate_cost
    from stabaudit.ir import ops as O

    def conv_s(w: np.ndarray, strides: tuple[int, ...], pads: tuple[int, ...], dilations: tuple[int, ...],
               groups: int, spatial: tuple[int, ...], points: tuple[int, ...]) -> float:
        """A convolution's certificate over ``spatial`` (the grid its bound reads) by its method,
        and its power iteration: ``points`` (the shape whose entries each take one kernel's
        multiply-accumulates) times the weight's fan."""
        shape = tuple(int(k) for k in np.shape(w))
        try:
            method, flops = conv_certificate_cost(shape, strides, pads, dilations, groups, spatial)
        except ValueError:
            return 0.0  # the rule refuses it as well
        macs = float(np.prod(points)) * float(np.prod(shape[1:]))
        power = 2.0 * WARM_ITERATIONS * macs / CORE_POWER_MACS_PER_S
        if method == "circulant":
            return flops / CORE_CIRCULANT_FLOPS_PER_S + power + groups * CORE_GROUP_S
        if method.startswith("dense"):
            return flops / CORE_DENSE_FLOPS_PER_S + CORE_LAYER_S
        return power  # the cheap fallback bounds: the power iteration only

    total = 0.0
    for node in graph.nodes:
        match node.op:
            case O.Conv(weight=w, strides=strides, pads=pads, dilations=dilations, groups=groups):
                total += conv_s(w, strides, pads, dilations, groups, tuple(graph.shapes[node.inputs[0]][2:]),
                                tuple(graph.shapes[node.output][1:]))
            case O.ConvTranspose(weight=w, strides=strides, pads=pads, dilations=dilations, groups=groups):
                # certified as the adjoint convolution over the output's grid (bounds.conv), its
                # power iteration through the transposed one
                total += conv_s(w, strides, pads, dilations, groups, tuple(graph.shapes[node.output][2:]),
                                tuple(graph.shapes[node.inputs[0]][1:]))
            case O.Linear(weight=w):
                rows, cols = (int(k) for k in np.shape(w)[-2:])
                total += float(rows) * cols * min(rows, cols) / CORE_DENSE_FLOPS_PER_S
    return total
