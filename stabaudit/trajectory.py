"""Many audits of the checkpoints of one training run -> TrajectoryReport (SA601, SA602)."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabaudit import __version__
from stabaudit.batching import (
    BatchExecutor,
    BatchJob,
    Outcome,
    Progress,
    collect,
    display_path,
    request_for,
)
from stabaudit.errors import ConfigError, UsageError
from stabaudit.report.model import (
    ChannelBracket,
    Finding,
    ModelError,
    Report,
    Status,
    ToolInfo,
    TrajectoryChannel,
    TrajectoryPoint,
    TrajectoryReport,
    Waiver,
)

if TYPE_CHECKING:
    from stabaudit.config import ConfigFile, Settings


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One checkpoint of the run: its file and its training step."""

    path: Path
    step: int


def parse_steps(text: str, count: int) -> tuple[int, ...]:
    """``--steps 0,100,200``: one integer per checkpoint, strictly increasing."""
    parts = [p.strip() for p in text.split(",")]
    try:
        steps = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected comma-separated integers, e.g. 0,100,200") from None
    if len(steps) != count:
        raise UsageError(f"--steps {text!r}: {len(steps)} step(s) for {count} checkpoint(s); give one per checkpoint")
    for before, after in zip(steps, steps[1:], strict=False):
        if after <= before:
            raise UsageError(f"--steps {text!r}: expected strictly increasing steps ({after} after {before})")
    return steps


def checkpoints_from_args(paths: Sequence[Path], steps: str | None) -> list[Checkpoint]:
    """The command line's checkpoints, in the order given; without --steps, step = index."""
    if not paths:
        raise UsageError("no checkpoints: name them (CKPT...) or give a config with a trajectory: list")
    numbers = parse_steps(steps, len(paths)) if steps is not None else tuple(range(len(paths)))
    if len({Path(os.path.normpath(p.absolute())) for p in paths}) != len(paths):
        raise UsageError("the same checkpoint is named twice")
    return [Checkpoint(path=p, step=s) for p, s in zip(paths, numbers, strict=True)]


def checkpoints_from_config(config: ConfigFile) -> list[Checkpoint]:
    """The config's ``trajectory:`` list: paths relative to the config; with steps, in the order
    written (the schema checked they increase); without, each glob's matches sorted, step = index."""
    base = config.path.absolute().parent
    out: list[Checkpoint] = []
    for i, entry in enumerate(config.trajectory):
        where = f"{config.path}:{entry.line}: trajectory[{i}].path"
        if entry.step is None and glob.has_magic(entry.path):
            matches = glob.glob(entry.path, root_dir=None if os.path.isabs(entry.path) else base, recursive=True)
            files = sorted({Path(os.path.normpath(base / m)) for m in matches if (base / m).is_file()})
            if not files:
                raise ConfigError(f"{where}: no file matches {entry.path!r}", path=str(config.path))
        else:
            target = Path(os.path.normpath(base / entry.path))
            if not target.is_file():
                what = "not a file" if target.exists() else "no such file"
                raise ConfigError(f"{where}: {what} {entry.path!r}", path=str(config.path))
            files = [target]
        for f in files:
            if any(c.path == f for c in out):
                raise ConfigError(f"{where}: {entry.path!r} names a checkpoint twice", path=str(config.path))
            out.append(Checkpoint(path=f, step=entry.step if entry.step is not None else len(out)))
    if not out:
        raise UsageError(f"{config.path}: no trajectory: to audit (add a trajectory: list or name checkpoints)")
    return out


def plan_trajectory(
    checkpoints: Sequence[Checkpoint],
    settings: Settings,
    *,
    waivers: Sequence[tuple[Waiver, ...]] = (),
    cache_dir: Path | None = None,
) -> list[BatchJob]:
    """One job per checkpoint, in step order, all with the same settings; ``waivers`` per
    checkpoint (the config's that match it); the analyses of unchanged checkpoints from ``cache_dir``."""
    jobs = []
    for i, ckpt in enumerate(checkpoints):
        request = request_for(
            Path(display_path(ckpt.path)), settings, waivers=waivers[i] if waivers else ()
        )
        jobs.append(BatchJob(index=i, request=request, cache_dir=str(cache_dir) if cache_dir else None))
    return jobs


# ---- the channels of one checkpoint's report ----------------------------------------------------------
def _finding(report: Report, check_id: str) -> Finding | None:
    return next((f for f in report.checks if f.id == check_id), None)


def _bracket_value(f: Finding | None) -> tuple[float | None, float | None] | None:
    if f is None or f.status is Status.SKIPPED or not isinstance(f.value, dict):
        return None
    lo, up = f.value.get("lower"), f.value.get("upper")
    return (
        float(lo) if isinstance(lo, int | float) else None,
        float(up) if isinstance(up, int | float) else None,
    )


def channel_limits(thresholds: dict[str, float] | Any) -> dict[TrajectoryChannel, float | None]:
    """Each channel's limit: the user's threshold of the channel's own check, else its default."""
    from stabaudit.checks import CHECKS

    def limit(check_id: str, fallback: float | None) -> float | None:
        if check_id not in CHECKS:
            return fallback
        spec = CHECKS.get(check_id)
        if spec.threshold_key and spec.threshold_key in thresholds:
            return float(thresholds[spec.threshold_key])
        return spec.default_threshold if spec.default_threshold is not None else fallback

    k_max = limit("SA101", 1.0)
    return {
        TrajectoryChannel.LIPSCHITZ: k_max,
        TrajectoryChannel.LAYER: limit("SA102", 1.0),
        TrajectoryChannel.EXPONENT: limit("SA103", 0.0),
        TrajectoryChannel.RESIDUAL: limit("SA202", k_max),
        TrajectoryChannel.SHARPNESS: None,  # each checkpoint's own 2/eta-type limit
    }


def report_channels(
    report: Report, limits: dict[TrajectoryChannel, float | None]
) -> tuple[ChannelBracket, ...]:
    """The channel brackets of one checkpoint's report (the channels it has)."""
    out = []
    lip = report.lipschitz
    out.append(
        ChannelBracket(
            channel=TrajectoryChannel.LIPSCHITZ, lower=lip.lower, upper=lip.upper,
            certified=lip.certified and lip.upper is not None, limit=limits[TrajectoryChannel.LIPSCHITZ],
        )
    )
    # SA102's layers: every single-input layer (residual adds are composed, not judged)
    judged = [layer.lipschitz for layer in report.layers if layer.op not in ("Add", "Sub")]
    if judged:
        uppers = [x.upper for x in judged]
        lowers = [x.lower for x in judged if x.lower is not None and x.lower_certified]
        out.append(
            ChannelBracket(
                channel=TrajectoryChannel.LAYER,
                lower=max(lowers) if lowers else None,
                upper=max(u for u in uppers if u is not None) if all(u is not None for u in uppers) else None,
                certified=all(x.certified and x.upper is not None for x in judged),
                limit=limits[TrajectoryChannel.LAYER],
            )
        )
    exponent = _bracket_value(_finding(report, "SA103"))
    if exponent is not None:
        lo, up = exponent
        # SA103's upper is certified exactly when the global bracket is (its certified flag)
        out.append(
            ChannelBracket(
                channel=TrajectoryChannel.EXPONENT, lower=lo, upper=up,
                certified=lip.certified and up is not None, limit=limits[TrajectoryChannel.EXPONENT],
            )
        )
    blocks = getattr(report, "residual_blocks", ())
    residual = _bracket_value(_finding(report, "SA202"))
    if blocks and residual is not None:
        lo, up = residual
        out.append(
            ChannelBracket(
                channel=TrajectoryChannel.RESIDUAL, lower=lo, upper=up,
                certified=all(getattr(b, "certified", False) for b in blocks) and up is not None,
                limit=limits[TrajectoryChannel.RESIDUAL],
            )
        )
    training = getattr(report, "training", None)
    if training is not None:
        sharp = getattr(training, "sharpness", None)
        margin = getattr(training, "margin", None)
        upper = getattr(training, "sharpness_upper", None)
        out.append(
            ChannelBracket(
                channel=TrajectoryChannel.SHARPNESS,
                lower=getattr(training, "sharpness_lower", None),
                upper=upper,
                certified=bool(getattr(training, "certified", False)) and upper is not None,
                # margin = limit - sharpness (2/eta, or the optimizer's own limit)
                limit=sharp + margin if sharp is not None and margin is not None else None,
            )
        )
    return tuple(out)


def trajectory_point(
    ckpt: Checkpoint, outcome: Outcome, limits: dict[TrajectoryChannel, float | None]
) -> TrajectoryPoint:
    match outcome:
        case ModelError(path=path, error=error, exit_code=code):
            return TrajectoryPoint(step=ckpt.step, path=path, verdict="error", exit_code=code, error=error)
        case Report(stopped=stopped) if stopped is not None:
            # stopped early (timeout, memory): an error point, its partial evidence not followed
            return TrajectoryPoint(step=ckpt.step, path=outcome.model.path, verdict="error",
                                   exit_code=outcome.exit_code, sha256=outcome.model.sha256,
                                   error=f"incomplete: {stopped.message}")
        case Report():
            return TrajectoryPoint(
                step=ckpt.step,
                path=outcome.model.path,
                verdict=outcome.verdict,
                exit_code=outcome.exit_code,
                sha256=outcome.model.sha256,
                channels=report_channels(outcome, limits),
            )
    raise TypeError(f"unexpected outcome {type(outcome).__name__}")


def _common_waivers(jobs: Sequence[BatchJob]) -> tuple[Waiver, ...]:
    """The waivers that apply to every checkpoint: only those may accept a trajectory finding."""
    if not jobs:
        return ()
    first = jobs[0].request.waivers
    return tuple(w for w in first if all(w in job.request.waivers for job in jobs[1:]))


def run_trajectory(
    checkpoints: Sequence[Checkpoint],
    executor: BatchExecutor,
    jobs: Sequence[BatchJob],
    *,
    config: str = "",
    progress: Progress | None = None,
) -> TrajectoryReport:
    """Audit every checkpoint (in any order, reported in step order), then SA601 and SA602 over
    them; the policy (thresholds, severities, disabled checks, --fail-on) is the jobs' own."""
    from stabaudit.checks import CheckPolicy
    from stabaudit.checks.trajectory import (
        TrajectoryEvidence,
        channel_summaries,
        representation_fits,
        run_trajectory_checks,
    )
    from stabaudit.engine import report_timestamp

    if len(checkpoints) != len(jobs) or not jobs:
        raise UsageError("a trajectory needs one job per checkpoint, and at least one")
    created, reproducible = report_timestamp()
    start = time.perf_counter()
    outcomes = collect(executor, jobs, progress)
    request = jobs[0].request
    limits = channel_limits(request.thresholds)
    points = tuple(
        trajectory_point(ckpt, outcomes[job.index], limits) for ckpt, job in zip(checkpoints, jobs, strict=True)
    )
    policy = CheckPolicy(
        thresholds=dict(request.thresholds), severities=dict(request.severities), disabled=request.disabled
    )
    evidence = TrajectoryEvidence(points=points)
    checks = run_trajectory_checks(evidence, policy, waivers=_common_waivers(jobs), today=created[:10])
    growth_upper, growth_lower = representation_fits(points)
    verdict, exit_code = trajectory_outcome(points, checks, request.fail_on)
    return TrajectoryReport(
        tool=ToolInfo(name="stabaudit", version=__version__),
        config=config,
        points=points,
        channels=channel_summaries(points),
        growth_upper=growth_upper,
        growth_lower=growth_lower,
        checks=checks,
        verdict=verdict,
        exit_code=exit_code,
        fail_on=request.fail_on.value,
        created=created,
        timings={} if reproducible else {"total": round(time.perf_counter() - start, 4)},
    )


def trajectory_outcome(
    points: Sequence[TrajectoryPoint], checks: Sequence[Finding], fail_on: Any
) -> tuple[str, int]:
    """error (the largest checkpoint error code, 2 or 3) if a checkpoint could not be audited, else
    fail (1) if SA601/SA602 fail the gate or a checkpoint's own gate failed, else pass (0)."""
    from stabaudit.report.gate import gate

    errors = [p.exit_code for p in points if p.verdict == "error"]
    if errors:
        return "error", max(errors)
    _, code = gate(checks, fail_on)
    if code or any(p.exit_code == 1 for p in points):
        return "fail", 1
    return "pass", 0

