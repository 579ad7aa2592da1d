"""Many audits: config entries -> requests -> an executor (in-process, processes, Dask) -> BatchReport."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stabaudit import __version__
from stabaudit.errors import StabauditError, UsageError
from stabaudit.report.model import BatchReport, ModelError, Report, ToolInfo, batch_outcome

if TYPE_CHECKING:
    from stabaudit.config import ConfigFile, Settings
    from stabaudit.engine import AuditRequest
    from stabaudit.report.model import Waiver

Outcome = Report | ModelError

# A worker that does not answer within the model's timeout plus this grace is killed (a hang in
# native code that the audit's own cooperative timeout cannot reach).
HARD_TIMEOUT_GRACE_S = 30.0
# How often a worker checks that its parent lives, where the kernel cannot tell it (not Linux).
PARENT_POLL_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def request_for(
    path: Path,
    settings: Settings,
    *,
    waivers: tuple[Waiver, ...] = (),
    baseline: Mapping[str, Any] | None = None,
) -> AuditRequest:
    """The engine request of one model from its effective settings (defaults merged with its
    entry and the command line). Unset settings keep the engine's defaults."""
    from stabaudit.checks import canonical_threshold
    from stabaudit.config.inputs import load_samples
    from stabaudit.engine import AuditRequest, policy_problem
    from stabaudit.report.gate import FailOn
    from stabaudit.report.model import Severity

    options: dict[str, Any] = {}
    if settings.seed is not None:
        options["seed"] = settings.seed
    if settings.method is not None:
        options["method"] = settings.method
    if settings.budget is not None:
        options["budget_s"] = settings.budget
        options["lower_budget_s"] = settings.budget
    if settings.eps is not None:
        options["eps"] = settings.eps
    if settings.training is not None:
        from stabaudit.config.inputs import load_training_spec

        options["training"] = load_training_spec(**dict(settings.training))
    if settings.domain is not None:
        options["domain"] = settings.domain
    if settings.samples is not None:
        options["sample_count"] = settings.samples
    if settings.inputs is not None:
        from stabaudit.analyses.samples import file_sha256

        options["inputs_sha256"] = file_sha256(settings.inputs)
    request = AuditRequest(
        path=path,
        input_shape=tuple(settings.input_shape) if settings.input_shape else None,
        input_shapes=dict(settings.input_shapes or {}),
        start=settings.start,
        perturb=tuple(settings.perturb or ()),
        end=tuple(settings.end or ()),
        thresholds={canonical_threshold(k): float(v) for k, v in settings.thresholds.items()},
        severities={k: Severity(v) for k, v in settings.severity.items()},
        fail_on=FailOn(settings.fail_on or "error"),
        baseline=baseline,
        inputs=load_samples(settings.inputs) if settings.inputs is not None else None,
        max_memory=settings.max_memory,
        timeout_s=settings.timeout,
        disabled=frozenset(settings.disable),
        waivers=waivers,
        trust_torchscript=bool(settings.trust_torchscript),
        arguments=dict(settings.arguments or {}),
        **options,
    )
    problem = policy_problem(request)  # refused before anything runs, with its config key
    if problem:
        raise UsageError(problem)
    return request


def display_path(path: Path) -> str:
    """How a batch names a model: relative to the working directory when below it (reports and
    baselines stay comparable across checkouts), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


@dataclass(frozen=True, kw_only=True)
class BatchJob:
    """One model of a batch: its position in the config, its request, and where to cache."""

    index: int
    request: AuditRequest
    cache_dir: str | None = None
    baseline_any_model: bool = False  # compare with a baseline entry of another model anyway


def run_job(job: BatchJob) -> Outcome:
    """One audit, never raising: whatever stops it becomes the model's ModelError (exit 2 for what
    it was given, 3 for a bug)."""
    from stabaudit.engine import audit

    path = str(job.request.path)
    cache = None
    if job.cache_dir is not None:
        from stabaudit.cache import AnalysisCache

        cache = AnalysisCache(Path(job.cache_dir))
    try:
        report = audit(job.request, cache=cache)
        if job.request.baseline is not None and not job.baseline_any_model:
            from stabaudit.report.baseline import other_model

            problem = other_model(job.request.baseline, report.model.sha256, report.model.input_shape)
            if problem:
                return ModelError(path=path, error=f"--baseline: {problem}", exit_code=2)
        return report
    except StabauditError as exc:
        return ModelError(path=path, error="; ".join(exc.problems), exit_code=exc.exit_code)
    except MemoryError:
        return ModelError(path=path, error="out of memory", exit_code=2)
    except Exception as exc:  # a bug in stabaudit: recorded, the other models still run
        return ModelError(
            path=path, error=f"internal error: {type(exc).__name__}: {exc}", exit_code=3
        )


class ExecutorKind(str, Enum):
    INPROCESS = "inprocess"
    PROCESSES = "processes"
    DASK = "dask"


Progress = Callable[[int, int, Outcome], None]  # (done, total, the outcome just finished)


class BatchExecutor(Protocol):
    """Runs jobs and yields (index, outcome) as they finish, in any order."""

    def run(self, jobs: Sequence[BatchJob]) -> Iterator[tuple[int, Outcome]]: ...


class InProcessExecutor:
    """One job after another in this process: no isolation from crashes, no start-up cost."""

    def run(self, jobs: Sequence[BatchJob]) -> Iterator[tuple[int, Outcome]]:
        for job in jobs:
            yield job.index, run_job(job)


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker end when its parent does, however the parent ends (SIGKILL included): on
    Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG); everywhere a
    daemon thread polls the parent's pid (an orphan is re-parented, its getppid changes) and ends
    the process. A worker busy inside an audit never reads its pipe, so the pipe alone would not
    tell it. SIGINT is ignored: Ctrl-C reaches the whole process group, and the parent answers it
    (one line, exit 130) and stops its workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc to call: the polling thread still watches
            pass
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="stabaudit-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn: Any, parent_pid: int | None = None) -> None:
    """A worker process: jobs in, outcomes out, until it gets None (each audit runs on one thread,
    see limits.one_thread, so that the report does not depend on --jobs). It dies with its parent
    (``parent_pid``): an orphan would go on burning a core for nobody."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send((job.index, run_job(job)))


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: BatchJob | None = None
    deadline: float = float("inf")


@dataclass
class ProcessExecutor:
    """``jobs`` long-lived worker processes (spawned: torch and fork do not mix). A worker that
    crashes or outlives its model's timeout is replaced; its model is recorded as an error and
    the batch goes on."""

    jobs: int
    _workers: list[_Worker] = field(default_factory=list)

    def _start(self) -> _Worker:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
        process.start()
        child.close()
        return _Worker(process=process, conn=parent)

    @staticmethod
    def _stop(worker: _Worker, *, kill: bool) -> None:
        if kill:
            worker.process.kill()
        else:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def run(self, jobs: Sequence[BatchJob]) -> Iterator[tuple[int, Outcome]]:
        from multiprocessing.connection import wait

        pending = list(jobs)[::-1]
        workers = [self._start() for _ in range(max(1, min(self.jobs, len(pending))))]
        try:
            while pending or any(w.job is not None for w in workers):
                for w in workers:
                    if w.job is None and pending:
                        w.job = pending.pop()
                        limit = w.job.request.timeout_s
                        w.deadline = (
                            time.monotonic() + limit + HARD_TIMEOUT_GRACE_S
                            if limit is not None
                            else float("inf")
                        )
                        w.conn.send(w.job)
                busy = [w for w in workers if w.job is not None]
                timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                ready = wait(
                    [w.conn for w in busy] + [w.process.sentinel for w in busy],
                    timeout=min(timeout, 3600.0),
                )
                for i, w in enumerate(workers):
                    if w.job is None:
                        continue
                    job = w.job
                    path = str(job.request.path)
                    if w.conn in ready:
                        try:
                            index, outcome = w.conn.recv()
                        except (EOFError, OSError):
                            pass  # it died while answering: handled as a crash below
                        else:
                            w.job = None
                            yield index, outcome
                            continue
                    if w.process.sentinel in ready or not w.process.is_alive():
                        error = f"the audit crashed (worker exit code {w.process.exitcode})"
                    elif time.monotonic() >= w.deadline:
                        error = f"timed out after {job.request.timeout_s:g} s (worker killed)"
                    else:
                        continue
                    self._stop(w, kill=True)  # its model is recorded; a fresh worker goes on
                    workers[i] = self._start()
                    yield job.index, ModelError(path=path, error=error, exit_code=2)
        finally:
            for w in workers:
                self._stop(w, kill=w.job is not None)


@dataclass
class DaskExecutor:
    """Jobs on a Dask distributed cluster (``--executor dask --scheduler tcp://HOST:PORT``). The
    workers need stabaudit installed and the model files at the same paths (a shared file
    system). A worker lost with its job records that model as an error."""

    scheduler: str
    connect_timeout_s: float = 20.0

    def run(self, jobs: Sequence[BatchJob]) -> Iterator[tuple[int, Outcome]]:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise UsageError(
                "--executor dask needs the optional extra: pip install 'stabaudit[distributed]'"
            ) from None
        try:
            client = Client(self.scheduler, timeout=f"{self.connect_timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"--scheduler {self.scheduler}: cannot connect ({exc})") from None
        try:
            futures = {
                client.submit(run_job, job, pure=False, key=f"stabaudit-{job.index}-{os.getpid()}"): job
                for job in jobs
            }
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker died or the job could not be shipped
                    outcome = ModelError(
                        path=str(job.request.path),
                        error=f"the audit failed on the cluster: {type(exc).__name__}: {exc}",
                        exit_code=2,
                    )
                yield job.index, outcome
        finally:
            client.close()


def make_executor(kind: ExecutorKind, jobs: int, scheduler: str | None) -> BatchExecutor:
    match kind:
        case ExecutorKind.INPROCESS:
            return InProcessExecutor()
        case ExecutorKind.PROCESSES:
            return ProcessExecutor(jobs=jobs)
        case ExecutorKind.DASK:
            if not scheduler:
                raise UsageError("--executor dask needs --scheduler tcp://HOST:PORT")
            return DaskExecutor(scheduler=scheduler)
    raise UsageError(f"unknown executor {kind!r}")


def _baselines(path: Path | None) -> dict[str, Mapping[str, Any]] | None:
    """The model reports of a previous single or batch JSON report, by model path as a batch
    names it (display_path: `./m.onnx`, `m.onnx` and its absolute path are one key)."""
    if path is None:
        return None
    from stabaudit.report.baseline import read_report_json

    data = read_report_json(path)
    entries = data["models"] if isinstance(data.get("models"), list) else [data]
    return {
        display_path(Path(str(e["model"]["path"]))): e
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("model"), dict) and "path" in e["model"]
    }


def plan(
    config: ConfigFile,
    *,
    overrides: Settings | None = None,
    baseline: Path | None = None,
    cache_dir: Path | None = None,
    baseline_any_model: bool = False,
) -> list[BatchJob]:
    """Every model of the config as a job, in config order. A bad setting stops the batch before
    anything runs (exit 2); a model that cannot be audited is only known when it runs."""
    from stabaudit.config import resolve_models

    previous = _baselines(baseline)
    jobs = []
    for i, entry in enumerate(resolve_models(config)):
        settings = entry.settings.merged(overrides) if overrides is not None else entry.settings
        shown = Path(display_path(entry.path))
        try:
            request = request_for(
                shown,
                settings,
                waivers=entry.waivers,
                baseline=previous.get(str(shown)) if previous is not None else None,
            )
        except StabauditError as exc:
            raise UsageError(f"{config.path}: {entry.entry}: {exc}") from None
        jobs.append(
            BatchJob(
                index=i,
                request=request,
                cache_dir=str(cache_dir) if cache_dir else None,
                baseline_any_model=baseline_any_model,
            )
        )
    if not jobs:
        raise UsageError(f"{config.path}: no models: to audit (add a models: list)")
    return jobs


def collect(
    executor: BatchExecutor, jobs: Sequence[BatchJob], progress: Progress | None = None
) -> dict[int, Outcome]:
    """Every job's outcome by job index, reporting progress as they finish (in any order)."""
    outcomes: dict[int, Outcome] = {}
    for index, outcome in executor.run(jobs):
        outcomes[index] = outcome
        if progress is not None:
            progress(len(outcomes), len(jobs), outcome)
    return outcomes


def run_batch(
    config: ConfigFile,
    executor: BatchExecutor,
    jobs: Sequence[BatchJob],
    progress: Progress | None = None,
) -> BatchReport:
    """Run every job; the report lists the outcomes in config order, whatever order they
    finished in, so that --jobs 1 and --jobs N give the same report."""
    from stabaudit.engine import report_timestamp

    created, reproducible = report_timestamp()
    start = time.perf_counter()
    outcomes = collect(executor, jobs, progress)
    models = tuple(outcomes[job.index] for job in jobs)
    if reproducible:  # a pinned batch pins its models too
        models = tuple(
            replace(m, created=created, timings={}) if isinstance(m, Report) else m for m in models
        )
    verdict, exit_code = batch_outcome(models)
    return BatchReport(
        tool=ToolInfo(name="stabaudit", version=__version__),
        config=display_path(config.path),
        models=models,
        verdict=verdict,
        exit_code=exit_code,
        created=created,
        timings={} if reproducible else {"total": round(time.perf_counter() - start, 4)},
    )
