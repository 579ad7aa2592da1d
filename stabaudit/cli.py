"""The command line: options -> request -> engine -> renderer -> file -> exit code."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from stabaudit import __version__, interrupts
from stabaudit.errors import StabauditError, UsageError
from stabaudit.progress import Progress

if TYPE_CHECKING:
    from stabaudit.cache import AnalysisCache
    from stabaudit.config import Settings
    from stabaudit.renderers.base import OutputFormat
    from stabaudit.report.model import BatchReport, Report

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified stability audits of trained neural networks (ONNX, TorchScript).",
)


Terminated = interrupts.Terminated  # SIGTERM inside a command's body (exit code 143)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stabaudit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """stabaudit: certified Lipschitz brackets and stability checks with CI exit codes (`stabaudit explain --all`)."""


def _report_error(exc: StabauditError) -> None:
    """One line per problem, whatever the names hold: the path shown escaped (repr) when it holds
    a control character, and every other control character of the text escaped."""
    from stabaudit.paths import has_control, one_line, shown

    path = exc.path
    for problem in exc.problems:
        if path and not problem.startswith(path):
            problem = f"{path}: {problem}"
        if path and has_control(path):
            problem = problem.replace(path, shown(path))
        typer.echo(f"error: {one_line(problem)}", err=True)


def _run_guarded(debug: bool, body: Callable[[], int]) -> NoReturn:
    """Map errors to CONTRACT.md exit codes: 2 for bad input, 3 for a bug; tracebacks only with --debug."""
    try:
        with interrupts.raising():  # signals raise inside the body, so that clean-up runs
            code = body()
    except StabauditError as exc:
        if debug:
            traceback.print_exc()
        _report_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        interrupts.announce(signal.SIGINT, echo=_echo_err)
        raise typer.Exit(interrupts.exit_code(signal.SIGINT)) from None
    except Terminated:
        interrupts.announce(signal.SIGTERM, echo=_echo_err)
        raise typer.Exit(interrupts.exit_code(signal.SIGTERM)) from None
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader of stdout went away (`stabaudit explain --all | head -1`)
        _silence_stdout()
        raise typer.Exit(0) from None
    except Exception as exc:  # an internal error: a bug in stabaudit
        if debug:
            traceback.print_exc()
        from stabaudit.paths import one_line

        typer.echo(
            one_line(f"error: internal error: {type(exc).__name__}: {exc} (a bug in stabaudit; rerun with --debug "
                     "for the traceback and report it)"),
            err=True,
        )
        raise typer.Exit(3) from None
    raise typer.Exit(code)


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def parse_shapes(items: list[str] | None) -> tuple[tuple[int, ...] | None, dict[str, tuple[int, ...]]]:
    """--input-shape values: a plain 1,3,32,32 is the first input's, NAME=1,128 the named input's."""
    first: tuple[int, ...] | None = None
    named: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if sep:
            if not name.strip():
                raise UsageError(f"--input-shape {item!r}: expected NAME=1,128 or 1,3,32,32")
            if name.strip() in named:
                raise UsageError(f"--input-shape: input {name.strip()!r} is given twice")
            named[name.strip()] = parse_shape(dims)
        elif first is not None:
            raise UsageError("--input-shape: the plain form (the first input) is given twice; name the others NAME=...")
        else:
            first = parse_shape(item)
    return first, named


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"--input-shape {text!r}: expected comma-separated positive integers, e.g. 1,3,32,32"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(
            f"--input-shape {text!r}: expected comma-separated positive integers, e.g. 1,3,32,32"
        )
    return dims


def parse_arguments(items: list[str] | None) -> dict[str, Any] | None:
    """--arg NAME=VALUE values, as strings: forward's non-tensor arguments of a TorchScript model, or
    the values of an ONNX model's integer and bool inputs (the loader reads each as the argument's
    declared type or the input's dtype)."""
    import re

    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--arg {item!r}: expected NAME=VALUE, e.g. sr=16000")
        if name in values:
            raise UsageError(f"--arg: argument {name!r} is given twice")
        values[name] = value
    return values or None


def parse_threshold(text: str) -> tuple[str, float]:
    from stabaudit.checks import canonical_threshold

    name, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"--threshold {text!r}: expected NAME=VALUE, e.g. lipschitz=10")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--threshold {text!r}: {value!r} is not a number") from None
    return canonical_threshold(name.strip()), number


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` so that no reader ever sees a partial file: a temporary file in
    the target's directory, renamed over it. Through a symlink, the file it points to is replaced
    and the link kept. The new file's mode is 0666 less the umask, as for any file the user
    creates (reports are shared artefacts, not secrets)."""
    from stabaudit.atomic import write_files

    write_files([(text, path)])


def _silence_stdout() -> None:
    """After the reader of stdout closed the pipe: send what is left to /dev/null, so that neither
    the remaining writes nor the interpreter's final flush raise BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's stream)
        pass
    finally:
        os.close(devnull)


def validate_outputs(paths: Sequence[Path | None]) -> None:
    """Every --output file can be written, checked before the audit runs (exit 2 at once rather
    than an error after minutes of analysis): its directory exists and is writable, and the path
    is not a directory. A symlink is checked at the file it points to."""
    for path in paths:
        if path is None:
            continue
        target = Path(os.path.realpath(path))
        if target.is_dir():
            raise UsageError(f"--output {path}: is a directory")
        parent = target.parent
        if not parent.is_dir():
            raise UsageError(f"--output {path}: no such directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"--output {path}: the directory {parent} is not writable")


_EXT = {
    "table": ".txt",
    "json": ".json",
    "md": ".md",
    "html": ".html",
    "sarif": ".sarif",
    "junit": ".xml",
    "github": ".github.txt",
    "gitlab": ".gitlab.json",
}
FORMAT_HELP = (
    "table | json | md | html | sarif | junit | github (workflow annotations) | gitlab (Code Quality "
    "JSON) (default: table, or from each --output's suffix: .json .md .html .sarif .xml)"
)


# Choices shown in --help and offered by shell completion (tests keep them equal to the values the
# options accept: renderers.base.OutputFormat, report.gate.FailOn, config.METHODS).
FORMATS = ("table", "json", "md", "html", "sarif", "junit", "github", "gitlab")
FAIL_ON = ("error", "warning", "inconclusive")
METHOD_CHOICES = ("auto", "product", "layerwise", "sdp", "eclipse-fast", "eclipse", "lipsdp-neuron", "exact")

# Options shared by check, batch and trajectory (one definition each).
FormatOption = Annotated[list[str] | None, typer.Option("--format", "-f", metavar="FORMAT", help=FORMAT_HELP, autocompletion=lambda: list(FORMATS))]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        metavar="NAME=VALUE",
        help="NAME=VALUE (lipschitz, layer_lipschitz, exponent, residual_growth, local_lipschitz, growth_exponent, ... or a check id); makes that check, and only it, an error (unset: informational).",
    ),
]
FailOnOption = Annotated[
    str | None, typer.Option("--fail-on", metavar="|".join(FAIL_ON), autocompletion=lambda: list(FAIL_ON), help="error | warning | inconclusive (default error).")
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed of every random choice (default 0).")]
BudgetOption = Annotated[
    float | None,
    typer.Option(
        "--budget",
        help="Work planned for the whole audit's searches and solvers, in seconds of one core of the reference machine (default 10): one split over the global methods beyond the product, the sample channels, the residual blocks, the lower-bound search and the domain, what one leaves flowing on to the next. Counted work, never the clock: the same report on any machine and under any load (--timeout is the only clock).",
    ),
]
MaxMemoryOption = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory cap of the audit process, e.g. 8G, 512M, 25%: its whole resident memory, the ~0.5 GB of Python, torch and onnxruntime included; enforced when given (an allocation beyond it stops the audit: exit 2, an incomplete report). Default: half the RAM, or STABAUDIT_MAX_MEMORY, as a budget the estimates are checked against.",
    ),
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Reuse the analysis of unchanged models (same bytes, analysis settings, version) from here; checks and the gate always re-run (default: STABAUDIT_CACHE_DIR or ~/.cache/stabaudit).",
    ),
]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", metavar="", help="Neither read nor write the cache.")]
TrustOption = Annotated[
    bool,
    typer.Option(
        "--trust-torchscript",
        metavar="",
        help="Load TorchScript archives without the static gate of their code (which refuses calls outside the tensor operators, before anything runs): only for archives you vouch for.",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", metavar="", help="One line per phase of the audit on stderr, with the seconds since the start."),
]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", metavar="", help="No progress and no summary line on stderr (errors are still printed)."),
]
BaselineAnyModelOption = Annotated[
    bool,
    typer.Option(
        "--baseline-any-model",
        metavar="",
        help="Compare with the --baseline even when it is a report of another model (its sha256 and input shape both differ; refused by default, exit 2).",
    ),
]
SarifAllOption = Annotated[
    bool,
    typer.Option(
        "--sarif-all",
        metavar="",
        help="SARIF: a result for every check, passes and skips included (default: only the findings that are not a pass or skipped).",
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks.")]


def _check_options(
    *,
    threshold: list[str] | None,
    max_regression: float | None,
    eps: float | None,
    inputs: Path | None,
    max_memory: str | None,
    timeout: float | None,
    input_shape: list[str] | str | None,
    fail_on: str | None,
    method: str | None,
    seed: int | None,
    budget: float | None,
    trust_torchscript: bool = False,
    start: str | None = None,
    perturb: str | None = None,
    end: str | None = None,
    domain: str | None = None,
    arguments: list[str] | None = None,
) -> Settings:
    """The command line's settings, validated; they override the config's (only those given)."""
    from stabaudit.config import METHODS, Settings
    from stabaudit.limits import parse_size, validate_timeout

    thresholds: dict[str, float] = {}
    for item in threshold or []:
        key, value = parse_threshold(item)
        thresholds[key] = value
    if max_regression is not None:
        if not max_regression >= 0:
            raise UsageError(f"--max-regression {max_regression}: expected a fraction >= 0, e.g. 0.1")
        thresholds["max_regression"] = max_regression
    if eps is not None and not (eps >= 0 and eps < float("inf")):
        raise UsageError(f"--eps {eps}: expected a finite radius >= 0")
    if inputs is not None:
        from stabaudit.config.inputs import load_samples

        load_samples(inputs)  # fail now, with the option's name, not inside an audit
    if fail_on is not None and fail_on not in ("error", "warning", "inconclusive"):
        raise UsageError(f"--fail-on {fail_on!r}: expected error, warning or inconclusive")
    if method is not None and method not in METHODS:
        raise UsageError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if seed is not None and not 0 <= seed < 2**32:
        raise UsageError(f"--seed {seed}: expected an integer in [0, 2**32)")
    if budget is not None and not (budget > 0 and budget < float("inf")):
        raise UsageError(f"--budget {budget}: expected a positive number of seconds")
    shapes = parse_shapes([input_shape] if isinstance(input_shape, str) else input_shape)
    if start is not None and not start.strip():
        raise UsageError("--from: expected the name of a tensor of the model")
    ends = tuple(n.strip() for n in (end or "").split(",") if n.strip())
    if end is not None and not ends:
        raise UsageError("--to: expected the names of tensors of the model, comma-separated")
    audit_domain = None
    if domain is not None:
        from stabaudit.analyses.samples import parse_domain

        try:
            audit_domain = parse_domain(domain)
        except ValueError as exc:
            raise UsageError(f"--domain: {exc}") from None
    return Settings(
        thresholds=thresholds,
        input_shape=shapes[0],
        input_shapes=shapes[1] or None,
        start=start,
        perturb=tuple(n.strip() for n in (perturb or "").split(",") if n.strip()) or None,
        end=ends or None,
        seed=seed,
        fail_on=fail_on,  # type: ignore[arg-type]  # validated above
        method=method,  # type: ignore[arg-type]
        budget=budget,
        timeout=validate_timeout(timeout),
        eps=eps,
        inputs=inputs.absolute() if inputs is not None else None,
        max_memory=parse_size(max_memory) if max_memory is not None else None,
        trust_torchscript=True if trust_torchscript else None,  # not given: the config decides
        domain=audit_domain,
        arguments=parse_arguments(arguments),
    )


def _check_paths(models: list[Path], **options: Path | list[Path] | None) -> None:
    """Refuse any path on the command line that holds a NUL or another control character (exit 2),
    before anything is read or written; ``options`` by option name (output_dir: --output-dir)."""
    from stabaudit.errors import ModelLoadError
    from stabaudit.paths import check_path_text

    for model in models:
        check_path_text(model, error=ModelLoadError)
    for name, value in options.items():
        for path in value if isinstance(value, list) else [value] if value is not None else []:
            check_path_text(path, "--" + name.replace("_", "-"))


def _cache(cache_dir: Path | None, no_cache: bool) -> Path | None:
    """--no-cache wins; an explicit --cache-dir is used; else the default directory unless
    STABAUDIT_NO_CACHE is set (to anything but empty or 0)."""
    if no_cache:
        return None
    if cache_dir is not None:
        return cache_dir
    if os.environ.get("STABAUDIT_NO_CACHE", "").strip() not in ("", "0"):
        return None
    from stabaudit.cache import default_cache_dir

    return default_cache_dir()


def _targets(
    formats: list[str] | None, outputs: list[Path] | None, formats_enum: type[OutputFormat]
) -> list[tuple[OutputFormat, Path | None]]:
    """(format, file or None for stdout) for every requested output. One --format and one
    --output: the format as named. Several outputs: each one's suffix, else the one --format."""
    named = [_pick_format(f, None, formats_enum) for f in formats or []]
    outputs = [o for o in outputs or []] or None
    if len(named) > 1 and outputs:
        raise UsageError("--format may be repeated only without --output (several files: use suffixes)")
    if not outputs:
        return [(fmt, None) for fmt in (named or [formats_enum.TABLE])]
    if len(outputs) != len(set(outputs)):
        raise UsageError("--output: the same file is named twice")
    if len(outputs) == 1:
        fmt = named[0] if named else _pick_format(None, outputs[0], formats_enum)
        return [(fmt, _file(outputs[0]))]
    targets: list[tuple[OutputFormat, Path | None]] = []
    for out in outputs:
        guessed = formats_enum.from_suffix(out.suffix) if _file(out) is not None else None
        if guessed is None and not named:
            what = "stdout (-o -)" if _file(out) is None else f"the suffix {out.suffix!r}"
            raise UsageError(
                f"--output {out}: cannot tell the format from {what}; use .json .md .html .sarif .xml .txt "
                "or one --format"
            )
        targets.append((guessed or named[0], _file(out)))
    return targets


def _file(path: Path) -> Path | None:
    """``-o -`` is standard output."""
    return None if str(path) == "-" else path


def _write_all(texts: list[tuple[str | bytes, Path | None]]) -> list[str]:
    """Everything is rendered before anything is written; the files are written together, all or
    none (atomic.write_files: temporaries first, then the renames), then standard output. A
    closed stdout (`| head -1`) ends the stdout writes quietly; the files are still written.
    Returns what was written, for the summary line."""
    from stabaudit.atomic import write_files

    files = [(text, path) for text, path in texts if path is not None]
    if files:
        write_files(files)
    written = [str(path) for _, path in files]
    for text, path in texts:
        if path is not None:
            continue
        assert isinstance(text, str)  # a sidecar (bytes) is only ever written beside a file
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            continue
        written.append("stdout")
    return written


def _render(fmt: OutputFormat, report: Report, sarif_all: bool) -> str:
    from stabaudit.renderers import RENDERERS, OutputFormat
    from stabaudit.renderers.sarif import render_sarif

    if fmt is OutputFormat.SARIF:
        return render_sarif(report, all_results=sarif_all, docs_url=_docs_url())
    return RENDERERS.get(fmt)(report)


R = TypeVar("R")  # a report or a batch report


def _outputs(
    fmt: OutputFormat, report: Report, path: Path | None, sarif_all: bool
) -> list[tuple[str | bytes, Path | None]]:
    """One output's text and, for a JSON file whose witness is large, its sidecar .npz beside it
    (on stdout the witness is summarised by its digest and norms): reports stay small."""
    from stabaudit.report.witness import externalize

    return _with_sidecar(fmt, report, path, lambda r: _render(fmt, r, sarif_all), externalize)


def _batch_outputs(
    fmt: OutputFormat, batch: BatchReport, path: Path | None, sarif_all: bool
) -> list[tuple[str | bytes, Path | None]]:
    """_outputs for a batch report: one sidecar for all models (arrays m<i>_x, m<i>_y)."""
    from stabaudit.report.witness import externalize_batch

    return _with_sidecar(fmt, batch, path, lambda b: _render_batch(fmt, b, sarif_all), externalize_batch)


def _with_sidecar(
    fmt: OutputFormat, report: R, path: Path | None, render: Callable[[R], str],
    externalize: Callable[[R, str | None], tuple[R, dict[str, tuple[float, ...]]]],
) -> list[tuple[str | bytes, Path | None]]:
    from stabaudit.renderers import OutputFormat
    from stabaudit.report.witness import npz_bytes, sidecar_path

    if fmt is OutputFormat.TABLE and path is None:
        return [(_for_terminal(lambda: render(report)), path)]
    if fmt is not OutputFormat.JSON:
        return [(render(report), path)]
    side = sidecar_path(path) if path is not None else None
    small, arrays = externalize(report, side.name if side is not None else None)
    out: list[tuple[str | bytes, Path | None]] = [(render(small), path)]
    if arrays and side is not None:
        out.append((npz_bytes(arrays), side))
    return out


def _for_terminal(render: Callable[[], str]) -> str:
    """The table as standard output shows it: on a terminal, fitted to its width and in colour
    (NO_COLOR and FORCE_COLOR honoured); in a pipe, as a file holds it."""
    import shutil

    from stabaudit.renderers.table import WIDTH, colour_enabled, colourise

    tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
    token = WIDTH.set(shutil.get_terminal_size().columns if tty else None)
    try:
        text = render()
    finally:
        WIDTH.reset(token)
    return colourise(text) if colour_enabled(sys.stdout) else text


def _render_batch(fmt: OutputFormat, batch: BatchReport, sarif_all: bool) -> str:
    from stabaudit.renderers import BATCH_RENDERERS, OutputFormat
    from stabaudit.renderers.sarif import render_batch_sarif

    if fmt is OutputFormat.SARIF:
        return render_batch_sarif(batch, all_results=sarif_all, docs_url=_docs_url())
    return BATCH_RENDERERS.get(fmt)(batch)


def _docs_url() -> str | None:
    """Where the checks' documentation is published, for SARIF helpUri (an absolute URL of
    docs/theory.md; stabaudit has no website of its own): STABAUDIT_DOCS_URL, else none."""
    return os.environ.get("STABAUDIT_DOCS_URL", "").strip() or None


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _wrote(written: list[str]) -> str:
    return f"; wrote {', '.join(written)}" if written else ""


def summary_line(report: Report, written: list[str]) -> str:
    """The last line on stderr: verdict, bracket, the checks that fail the gate, what was written."""
    from stabaudit.report.gate import gates, is_warning, why_not_gating
    from stabaudit.report.refusal import is_refusal

    head = f"stabaudit: {report.verdict.upper()} (exit code {report.exit_code}) {report.model.path}"
    if is_refusal(report):
        ids = ", ".join(f.id for f in report.checks)
        return f"{head}: refused ({ids}), no bound computed{_wrote(written)}"
    lip = report.lipschitz
    failing = [f.id for f in report.checks if gates(f, report.fail_on)]
    warnings = [f.id for f in report.checks if is_warning(f, report.fail_on)]
    sound = "no upper bound" if lip.upper is None else ("certified upper" if lip.certified else "estimate upper")
    # a branch switch: the bracket is about the smooth part, the jumps add a constant term
    plus = f" + additive {_num(lip.additive.value)}" if lip.additive is not None else ""
    parts = [f"{head}: Lipschitz [{_num(lip.lower)}, {_num(lip.upper)}]{plus} ({sound})"]
    if report.stopped is not None:
        why = "timeout" if report.stopped.reason == "timeout" else "memory budget"
        parts[0] = (f"{head}: INCOMPLETE, stopped by the {why} in the "
                    f"{report.stopped.stage} stage; Lipschitz [{_num(lip.lower)}, {_num(lip.upper)}]{plus} ({sound})")
    dom = report.domain_lipschitz
    if dom is not None:
        over = "no upper bound" if dom.upper is None else ("certified upper" if dom.certified else "estimate upper")
        parts[0] += f", over the domain [{_num(dom.lower)}, {_num(dom.upper)}] ({over})"
    parts.append(f"failing: {', '.join(failing) or 'none'}")
    if warnings:
        parts.append(f"warnings ({why_not_gating(report.checks, report.fail_on)}): {', '.join(warnings)}")
    return "; ".join(parts) + _wrote(written)


def batch_summary_line(batch: BatchReport, written: list[str]) -> str:
    from stabaudit.report.gate import gates
    from stabaudit.report.model import ModelError

    failing = [
        f"{m.model.path} ({', '.join(f.id for f in m.checks if gates(f, m.fail_on))})"
        for m in batch.models
        if not isinstance(m, ModelError) and m.exit_code == 1
    ]
    errors = [m.path if isinstance(m, ModelError) else f"{m.model.path} (incomplete)"
              for m in batch.models if isinstance(m, ModelError) or m.stopped is not None]
    parts = [
        f"stabaudit batch: {batch.verdict.upper()} (exit code {batch.exit_code}) {batch.config}: "
        f"{len(batch.models)} models, {len(failing)} failed, {len(errors)} not audited"
    ]
    if failing:
        parts.append(f"failing: {', '.join(failing)}")
    if errors:
        parts.append(f"not audited: {', '.join(errors)}")
    return "; ".join(parts) + _wrote(written)


def _say(line: str, quiet: bool) -> None:
    from stabaudit.paths import one_line

    if not quiet:
        typer.echo(one_line(line), err=True)  # one line whatever a model's path holds


def _refusal(exc: StabauditError, model: Path, fail_on: str | None) -> Report:
    """The report of a model whose audit stopped with exit code 2 (report/refusal.py)."""
    from stabaudit.checks import rule_catalogue
    from stabaudit.engine import report_timestamp
    from stabaudit.report.model import ToolInfo
    from stabaudit.report.refusal import refusal_report

    try:
        digest = hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else ""
    except OSError:
        digest = ""
    return refusal_report(
        exc,
        path=str(model),
        fail_on=fail_on or "error",
        tool=ToolInfo(name="stabaudit", version=__version__),
        created=report_timestamp()[0],
        rules=rule_catalogue(),
        sha256=digest,
    )


@app.command()
def check(
    model: Annotated[
        Path, typer.Argument(help="An .onnx file or a TorchScript archive (torch.jit.save).")
    ],
    format: FormatOption = None,
    output: Annotated[
        list[Path] | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Write the report to this file instead of stdout; repeat for several formats (by suffix).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="An audit YAML (default: ./stabaudit.yaml when present): defaults, the model's entry and its waivers apply.",
        ),
    ] = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input-shape", metavar="SHAPE",
                     help="Fix dynamic dims: 1,3,32,32 (the first input) or NAME=1,128 (repeatable)."),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", metavar="TENSOR",
                     help="Start the audit at this tensor of an ONNX model: the graph upstream of it is cut, "
                          "other inputs held at values."),
    ] = None,
    perturb: Annotated[
        str | None,
        typer.Option("--perturb", metavar="NAME,...",
                     help="ONNX: perturb only these inputs; the other real inputs are held at seeded values."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", metavar="TENSOR,...",
                     help="End the audit at these tensors of an ONNX model (its outputs): the nodes after them, "
                          "e.g. a detector's TopK and NonMaxSuppression, are cut."),
    ] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option("--arg", metavar="NAME=VALUE",
                     help="The value of argument NAME, e.g. sr=16000: TorchScript, forward's non-tensor argument; "
                          "ONNX, an integer or bool input, held at it (repeatable; lists as 1,2,3; overrides the "
                          "config's arguments:)."),
    ] = None,
    threshold: ThresholdOption = None,
    fail_on: FailOnOption = None,
    seed: SeedOption = None,
    device: Annotated[str, typer.Option("--device", metavar="cpu|cuda", autocompletion=lambda: ["cpu", "cuda"], help="Where tensors live.")] = "cpu",
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar="METHOD",
            autocompletion=lambda: list(METHOD_CHOICES),
            help="Global upper bound: auto (default: every certified method that applies, the tightest wins) | product | layerwise | sdp | eclipse-fast | eclipse | lipsdp-neuron | exact (branch and bound, small ReLU nets).",
        ),
    ] = None,
    budget: BudgetOption = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="A previous JSON report (single or batch): fail (SA001) on a regression of a certified bound.",
        ),
    ] = None,
    max_regression: Annotated[
        float | None,
        typer.Option(
            "--max-regression",
            help="Allowed growth of a certified bound against --baseline (default 0.1 = 10%).",
        ),
    ] = None,
    baseline_any_model: BaselineAnyModelOption = False,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="Sample inputs [N, ...] (.npz array x, or .npy) for the data-dependent checks (SA201's mu, SA301-SA303, SA401); without them, a config domain: draws samples.",
        ),
    ] = None,
    eps: Annotated[
        float | None,
        typer.Option("--eps", help="Radius of the linf balls around the samples (SA302, default 0.01)."),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            metavar="LOW,HIGH|ball:EPS|margin:M",
            help="The input domain the bounds are certified over: the box LOW <= x <= HIGH (every entry), linf balls of radius EPS around the --inputs samples, or the samples' box widened by M. Replaces the config's domain:.",
        ),
    ] = None,
    max_memory: MaxMemoryOption = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds for the whole audit; stops cleanly with exit 2 and an incomplete report (the stages that finished)."),
    ] = None,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    sarif_all: SarifAllOption = False,
    trust_torchscript: TrustOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    debug: DebugOption = False,
) -> None:
    """Audit one model: certified per-layer and global Lipschitz bounds and the stability checks."""

    def body() -> int:
        from stabaudit.api import audit_with
        from stabaudit.config import find_default_config
        from stabaudit.renderers import OutputFormat

        # the model's own path is the engine's to refuse (a refusal report is still written)
        _check_paths([], output=output, config=config, baseline=baseline, inputs=inputs, cache_dir=cache_dir)
        targets = _targets(format, output, OutputFormat)
        validate_outputs([path for _, path in targets])
        overrides = _check_options(
            threshold=threshold, max_regression=max_regression, eps=eps, inputs=inputs,
            max_memory=max_memory, timeout=timeout, input_shape=input_shape, fail_on=fail_on,
            method=method, seed=seed, budget=budget, trust_torchscript=trust_torchscript, start=start,
            perturb=perturb, end=end, domain=domain, arguments=arg,
        )
        if device not in ("cpu", "cuda"):
            raise UsageError(f"--device {device!r}: expected cpu or cuda")
        try:
            with Progress(enabled=not quiet, label=str(model), verbose=verbose) as progress:
                report = audit_with(
                    model,
                    overrides,
                    config=config if config is not None else find_default_config(Path(".")),
                    baseline=baseline,
                    cache_dir=_cache(cache_dir, no_cache),
                    device=device,
                    observer=progress.phase,
                    baseline_any_model=baseline_any_model,
                )
        except StabauditError as exc:
            if exc.exit_code != 2:
                raise
            # refused (unsupported operators, equivalence, a file that cannot be read, ...): the
            # reasons on stderr as always, and still a report in every requested format
            if debug:
                traceback.print_exc()
            _report_error(exc)
            report = _refusal(exc, model, overrides.fail_on)
        else:
            if report.stopped is not None:  # stopped early: the reason on stderr as for a refusal
                _report_error(StabauditError(report.stopped.message, path=str(model)))
        written = _write_all([out for fmt, path in targets for out in _outputs(fmt, report, path, sarif_all)])
        _say(summary_line(report, written), quiet)
        return report.exit_code

    _run_guarded(debug, body)


@app.command()
def batch(
    config: Annotated[Path, typer.Argument(help="A batch YAML: defaults:, models:, waivers:.")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Models audited in parallel (processes).")] = 1,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="processes (default: worker processes, a crash or hang costs only its model) | inprocess | dask",
        ),
    ] = "processes",
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="The Dask scheduler for --executor dask, tcp://HOST:PORT."),
    ] = None,
    format: FormatOption = None,
    output: Annotated[
        list[Path] | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write the batch report here; repeat for several formats."),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Also write each model's own report here (every --format; json by default) and the batch report as batch.<ext>.",
        ),
    ] = None,
    threshold: ThresholdOption = None,
    fail_on: FailOnOption = None,
    seed: SeedOption = None,
    method: Annotated[str | None, typer.Option("--method", metavar="METHOD", autocompletion=lambda: list(METHOD_CHOICES), help="Global method for every model.")] = None,
    budget: BudgetOption = None,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="A previous batch (or single) JSON report: SA001 per model."),
    ] = None,
    max_regression: Annotated[
        float | None, typer.Option("--max-regression", help="Allowed growth against --baseline (default 0.1).")
    ] = None,
    baseline_any_model: BaselineAnyModelOption = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds per model; a model past it is an error entry (its incomplete report when the equivalence check finished)."),
    ] = None,
    max_memory: MaxMemoryOption = None,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    sarif_all: SarifAllOption = False,
    trust_torchscript: TrustOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Audit every model of a batch config; exit 2 if any could not be audited, else 1 if any gate failed."""

    def body() -> int:
        from stabaudit.batching import ExecutorKind, make_executor, plan, run_batch
        from stabaudit.config import load_config
        from stabaudit.renderers import OutputFormat

        if jobs < 1:
            raise UsageError(f"--jobs {jobs}: expected a positive number of processes")
        _check_paths([], config=config, output=output, output_dir=output_dir, baseline=baseline, cache_dir=cache_dir)
        try:
            kind = ExecutorKind(executor)
        except ValueError:
            known = ", ".join(k.value for k in ExecutorKind)
            raise UsageError(f"--executor {executor!r}: expected one of {known}") from None
        targets = _targets(format, output, OutputFormat)
        validate_outputs([path for _, path in targets])
        if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
            raise UsageError(f"--output-dir {output_dir}: not a directory")
        dir_formats = [_pick_format(f, None, OutputFormat) for f in format or ["json"]]
        overrides = _check_options(
            threshold=threshold, max_regression=max_regression, eps=None, inputs=None,
            max_memory=max_memory, timeout=timeout, input_shape=None, fail_on=fail_on,
            method=method, seed=seed, budget=budget, trust_torchscript=trust_torchscript,
        )
        cfg = load_config(config)
        planned = plan(
            cfg,
            overrides=overrides,
            baseline=baseline,
            cache_dir=_cache(cache_dir, no_cache),
            baseline_any_model=baseline_any_model,
        )
        runner = make_executor(kind, jobs, scheduler)
        with Progress(enabled=not quiet, label=str(config), total=len(planned)) as progress:
            report = run_batch(cfg, runner, planned, progress=progress.step)
        texts = [out for fmt, path in targets for out in _batch_outputs(fmt, report, path, sarif_all)]
        if output_dir is not None:
            from stabaudit.report.model import Report

            for fmt in dir_formats:
                ext = _EXT[fmt.value]
                texts += _batch_outputs(fmt, report, output_dir / f"batch{ext}", sarif_all)
                for i, m in enumerate(report.models):
                    if isinstance(m, Report):
                        name = f"{i:03d}-{Path(m.model.path).stem}{ext}"
                        texts += _outputs(fmt, m, output_dir / name, sarif_all)
            output_dir.mkdir(parents=True, exist_ok=True)
        # the models that could not be audited, one line each, whatever the outputs and --quiet
        _report_model_errors(report)
        written = _write_all(texts)
        _say(batch_summary_line(report, written), quiet)
        return report.exit_code

    _run_guarded(debug, body)


def _report_model_errors(batch: BatchReport) -> None:
    from stabaudit.paths import one_line, shown
    from stabaudit.report.model import ModelError

    for m in batch.models:
        if isinstance(m, ModelError):
            typer.echo(one_line(f"error: {shown(m.path)}: {m.error}"), err=True)


def _pick_format(
    name: str | None, output: Path | None, formats: type[OutputFormat]
) -> OutputFormat:
    if name is not None:
        try:
            return formats(name)
        except ValueError:
            known = ", ".join(f.value for f in formats)
            raise UsageError(f"--format {name!r}: expected one of {known}") from None
    if output is not None:
        guessed = formats.from_suffix(output.suffix)
        if guessed is not None:
            return guessed
    return formats.TABLE


@app.command()
def explain(
    check_id: Annotated[
        str | None, typer.Argument(help="A check id such as SA101, or its name.")
    ] = None,
    all_checks: Annotated[
        bool, typer.Option("--all", metavar="", help="Every check, as the markdown of docs/theory.md.")
    ] = False,
) -> None:
    """What a check proves, its inequality, its assumptions and its settings."""

    def body() -> int:
        from stabaudit.checks import CHECKS
        from stabaudit.checks.docs import explain_text, refused_text, theory_markdown
        from stabaudit.report.refusal import AUDIT_REFUSED

        if all_checks:
            sys.stdout.write(theory_markdown())
            return 0
        if check_id is None:
            raise UsageError("explain: name a check (e.g. SA101) or give --all")
        wanted = check_id.upper()
        if wanted in (AUDIT_REFUSED.id, AUDIT_REFUSED.name.upper()):
            typer.echo(refused_text(), nl=False)
            return 0
        for key in CHECKS:
            spec = CHECKS.get(key)
            if wanted in (spec.id, spec.name.upper()):
                typer.echo(explain_text(spec), nl=False)
                return 0
        known = ", ".join(sorted(CHECKS))
        raise UsageError(f"unknown check {check_id!r}; known: {known}")

    _run_guarded(False, body)


cache_app = typer.Typer(
    no_args_is_help=True,
    help="The analysis cache: its directory, entries and size (info), or empty it (clear).",
)
app.add_typer(cache_app, name="cache")
CacheDirArg = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="The cache directory (default: STABAUDIT_CACHE_DIR or ~/.cache/stabaudit)."),
]


def _open_cache(cache_dir: Path | None) -> AnalysisCache:
    from stabaudit.cache import AnalysisCache, default_cache_dir

    if cache_dir is not None:
        _check_paths([], cache_dir=cache_dir)
    return AnalysisCache(cache_dir if cache_dir is not None else default_cache_dir())


@cache_app.command("info")
def cache_info(cache_dir: CacheDirArg = None) -> None:
    """The cache's directory, number of entries, total size and size cap, and its key file."""

    def body() -> int:
        from stabaudit.limits import format_size

        info = _open_cache(cache_dir).info()
        typer.echo(f"directory: {info.directory}")
        typer.echo(f"entries: {info.entries}")
        typer.echo(f"size: {info.bytes} bytes ({format_size(info.bytes)})")
        typer.echo(f"max size: {info.max_bytes} bytes ({format_size(info.max_bytes)}; STABAUDIT_CACHE_MAX_BYTES)")
        typer.echo(f"key file: {info.key_file}")
        return 0

    _run_guarded(False, body)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDirArg = None) -> None:
    """Remove every entry of the cache (the key file stays)."""

    def body() -> int:
        cache = _open_cache(cache_dir)
        removed = cache.clear()
        typer.echo(f"removed {removed} entries from {cache.directory}")
        return 0

    _run_guarded(False, body)


@app.command()
def ops() -> None:
    """The operators understood, per loader."""

    def body() -> int:
        from stabaudit.loaders import domain_operators, supported_operators

        domain = domain_operators()
        for loader, names in supported_operators().items():
            marked = domain.get(loader, {})
            typer.echo(f"{loader} ({len(names)}):")
            typer.echo("  " + ", ".join(f"{n}*" if n in marked else n for n in sorted(names)))
            if marked:
                typer.echo("  * needs a bounded input domain (no global Lipschitz bound): " + ", ".join(
                    f"{n} ({why})" if why else n for n, why in sorted(marked.items())))
        return 0

    _run_guarded(False, body)


@app.command()
def trajectory(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="Checkpoints of one training run, in step order (default: the config's trajectory: list)."),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="The training step of each checkpoint, e.g. 0,100,200 (default 0,1,2,...)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="An audit YAML: its defaults and waivers apply; its trajectory: list when no CKPT is named (default: ./stabaudit.yaml when present).",
        ),
    ] = None,
    format: FormatOption = None,
    output: Annotated[
        list[Path] | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write the trajectory report here; repeat for several formats (by suffix)."),
    ] = None,
    threshold: ThresholdOption = None,
    fail_on: FailOnOption = None,
    budget: BudgetOption = None,
    seed: SeedOption = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Checkpoints audited in parallel (worker processes when > 1).")
    ] = 1,
    trust_torchscript: TrustOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Audit the checkpoints of one training run: SA601 (supremum) and SA602 (growth exponent);
    exit 2 if any checkpoint could not be audited, else 1 if SA601/SA602 or a checkpoint's gate failed."""

    def body() -> int:
        from stabaudit.batching import ExecutorKind, make_executor
        from stabaudit.config import find_default_config, load_config, resolve_one
        from stabaudit.renderers import TRAJECTORY_RENDERERS, OutputFormat
        from stabaudit.trajectory import (
            checkpoints_from_args,
            checkpoints_from_config,
            plan_trajectory,
            run_trajectory,
        )

        if jobs < 1:
            raise UsageError(f"--jobs {jobs}: expected a positive number of processes")
        _check_paths(list(checkpoints or []), output=output, config=config)
        targets = _targets(format, output, OutputFormat)
        validate_outputs([path for _, path in targets])
        for fmt, _ in targets:
            if fmt not in TRAJECTORY_RENDERERS:
                raise UsageError(f"format {fmt.value} is not available for trajectories (use table, json or md)")
        overrides = _check_options(
            threshold=threshold, max_regression=None, eps=None, inputs=None, max_memory=None,
            timeout=None, input_shape=None, fail_on=fail_on, method=None, seed=seed, budget=budget,
            trust_torchscript=trust_torchscript,
        )
        path = config if config is not None else find_default_config(Path("."))
        cfg = load_config(path) if path is not None else None
        if checkpoints:
            ckpts = checkpoints_from_args(checkpoints, steps)
        elif cfg is not None and cfg.trajectory:
            if steps is not None:
                raise UsageError("--steps goes with checkpoints named on the command line; the config's trajectory: has its own")
            ckpts = checkpoints_from_config(cfg)
        else:
            raise UsageError("no checkpoints: name them (CKPT...) or give a config with a trajectory: list")
        settings = cfg.defaults.merged(overrides) if cfg is not None else overrides
        waivers = [resolve_one(cfg, c.path).waivers for c in ckpts] if cfg is not None else []
        planned = plan_trajectory(ckpts, settings, waivers=waivers)
        runner = make_executor(ExecutorKind.PROCESSES if jobs > 1 else ExecutorKind.INPROCESS, jobs, None)
        with Progress(enabled=not quiet, label="trajectory", total=len(planned)) as progress:
            report = run_trajectory(
                ckpts, runner, planned, config=str(path) if cfg is not None else "", progress=progress.step
            )
        _write_all([(TRAJECTORY_RENDERERS.get(fmt)(report), out) for fmt, out in targets])
        return report.exit_code

    _run_guarded(debug, body)


def main() -> None:
    """The command line (stabaudit.entry.main installs the signal handlers before importing this
    module; installing them again here serves a console script generated before that entry)."""
    # MKL_CBWR (reproducible MKL kernels) is pinned when the package is imported: stabaudit/__init__
    interrupts.install()
    app()


if __name__ == "__main__":
    main()
