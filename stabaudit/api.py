"""The Python API: stabaudit.audit(path, **options) -> Report and stabaudit.batch(config) -> BatchReport."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stabaudit.config import Settings
    from stabaudit.engine import Observer
    from stabaudit.report.model import BatchReport, Report, Waiver


def audit(
    path: str | Path,
    *,
    config: str | Path | None = None,
    baseline: str | Path | None = None,
    baseline_any_model: bool = False,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    **options: Any,
) -> Report:
    """Audit one model. ``options`` are the config's settings (thresholds, severity, input_shape,
    seed, fail_on, method, budget, timeout, eps, inputs, domain, samples, training, max_memory,
    disable, trust_torchscript, arguments) and override
    ``config``'s; the model's entry and waivers in ``config`` apply as with ``stabaudit check``.
    Raises StabauditError subclasses (exit_code 2 or 3) when the audit cannot run."""
    from stabaudit.config import Settings
    from stabaudit.errors import UsageError

    try:
        overrides = Settings(**options)
    except Exception as exc:  # pydantic's ValidationError: name the option
        raise UsageError(f"stabaudit.audit: bad option: {str(exc).splitlines()[0]}") from None
    return audit_with(
        Path(path),
        overrides,
        config=Path(config) if config is not None else None,
        baseline=Path(baseline) if baseline is not None else None,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        device=device,
        baseline_any_model=baseline_any_model,
    )


def audit_with(
    model: Path,
    overrides: Settings,
    *,
    config: Path | None,
    baseline: Path | None,
    cache_dir: Path | None,
    device: str = "cpu",
    observer: Observer | None = None,
    baseline_any_model: bool = False,
) -> Report:
    """One audit from validated settings: the config's defaults (or the model's entry) and its
    waivers, overridden by ``overrides``; shared by ``stabaudit check`` and ``audit``. A baseline
    of another model (sha256 and input shape both differ) is refused (UsageError, exit 2) unless
    ``baseline_any_model``."""
    from dataclasses import replace

    from stabaudit.batching import request_for
    from stabaudit.config import Settings, load_config, resolve_one
    from stabaudit.engine import audit as run
    from stabaudit.errors import UsageError

    settings = Settings()
    waivers: tuple[Waiver, ...] = ()
    if config is not None:
        entry = resolve_one(load_config(config), model)
        settings, waivers = entry.settings, entry.waivers
    previous = None
    if baseline is not None:
        from stabaudit.report.baseline import load_baseline

        previous = load_baseline(baseline, str(model))
    request = request_for(model, settings.merged(overrides), waivers=waivers, baseline=previous)
    if device != "cpu":
        request = replace(request, device=device)
    cache = None
    if cache_dir is not None:
        from stabaudit.cache import AnalysisCache

        cache = AnalysisCache(cache_dir)
    report = run(request, observer=observer, cache=cache)
    if previous is not None and not baseline_any_model:
        from stabaudit.report.baseline import other_model

        problem = other_model(previous, report.model.sha256, report.model.input_shape)
        if problem:
            raise UsageError(f"--baseline {baseline}: {problem}", path=str(model))
    return report


def batch(
    config: str | Path,
    *,
    jobs: int = 1,
    executor: str = "processes",
    scheduler: str | None = None,
    baseline: str | Path | None = None,
    baseline_any_model: bool = False,
    cache_dir: str | Path | None = None,
) -> BatchReport:
    """Audit every model of a batch config (as ``stabaudit batch``); never raises for one model's
    failure: it is a ModelError entry of the report."""
    from stabaudit.batching import ExecutorKind, make_executor, plan, run_batch
    from stabaudit.config import load_config

    cfg = load_config(config)
    jobs_ = plan(
        cfg,
        baseline=Path(baseline) if baseline is not None else None,
        baseline_any_model=baseline_any_model,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
    return run_batch(cfg, make_executor(ExecutorKind(executor), jobs, scheduler), jobs_)
