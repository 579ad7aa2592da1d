"""The command line: options -> request -> engine -> renderer -> file -> exit code."""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from stabaudit import __version__
from stabaudit.errors import StabauditError, UsageError

if TYPE_CHECKING:
    from stabaudit.renderers.base import OutputFormat

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Certified stability audits of trained neural networks (ONNX, TorchScript).",
)


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that clean-up runs (exit code 143 = 128 + 15)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


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
    """stabaudit: certified Lipschitz brackets and stability checks (THEORY.md) with CI exit codes."""


def _report_error(exc: StabauditError) -> None:
    for problem in exc.problems:
        if exc.path and not problem.startswith(exc.path):
            typer.echo(f"error: {exc.path}: {problem}", err=True)
        else:
            typer.echo(f"error: {problem}", err=True)


def _run_guarded(debug: bool, body: Callable[[], int]) -> NoReturn:
    """Map errors to CONTRACT.md exit codes: 2 for bad input, 3 for a bug; tracebacks only with --debug."""
    try:
        code = body()
    except StabauditError as exc:
        if debug:
            traceback.print_exc()
        _report_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted (SIGINT); no report written", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("error: terminated (SIGTERM); no report written", err=True)
        raise typer.Exit(143) from None
    except typer.Exit:
        raise
    except Exception as exc:  # an internal error: a bug in stabaudit
        if debug:
            traceback.print_exc()
        typer.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (a bug in stabaudit; rerun with --debug "
            "for the traceback and report it)",
            err=True,
        )
        raise typer.Exit(3) from None
    raise typer.Exit(code)


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


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename: never a partial file."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command()
def check(
    model: Annotated[
        Path, typer.Argument(help="An .onnx file or a TorchScript archive (torch.jit.save).")
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="table | json | md | sarif | junit (default: table, or from --output's suffix: .json .md .sarif .xml)",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the report to this file instead of stdout."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="An audit YAML (thresholds:, severity:, input_shape:, seed:, fail_on:).",
        ),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Fix dynamic dims, e.g. 1,3,32,32.")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            help="NAME=VALUE (lipschitz, layer_lipschitz, exponent, or a check id); makes the check an error.",
        ),
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option("--fail-on", help="error | warning | inconclusive (default error)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of every random choice (default 0).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Global upper bound: auto (every certified method that applies, the tightest wins) | product | layerwise | sdp | eclipse-fast | eclipse | lipsdp-neuron | exact (branch and bound, small ReLU nets).",
        ),
    ] = "auto",
    budget: Annotated[
        float,
        typer.Option(
            "--budget",
            help="Seconds planned for each search-based analysis: the global methods beyond the product, and the lower-bound search.",
        ),
    ] = 10.0,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="A previous JSON report: fail (SA001) on a regression of a certified bound.",
        ),
    ] = None,
    max_regression: Annotated[
        float | None,
        typer.Option(
            "--max-regression",
            help="Allowed growth of a certified bound against --baseline (default 0.1 = 10%).",
        ),
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="Sample inputs [N, ...] (.npz array x, or .npy) for SA302's local bounds.",
        ),
    ] = None,
    eps: Annotated[
        float, typer.Option("--eps", help="Radius of the linf balls around the samples (SA302).")
    ] = 0.01,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Memory budget, e.g. 8G, 512M, 25% (default: half the RAM, or STABAUDIT_MAX_MEMORY).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Seconds for the whole audit; stops cleanly with exit 2."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Audit one model: certified per-layer and global Lipschitz bounds and the stability checks."""

    def body() -> int:
        from stabaudit.config import load_config
        from stabaudit.engine import AuditRequest, audit
        from stabaudit.renderers import RENDERERS, OutputFormat
        from stabaudit.report.gate import FailOn
        from stabaudit.report.model import Severity

        cfg = load_config(config) if config is not None else None
        fmt = _pick_format(format, output, OutputFormat)
        thresholds: dict[str, float] = {}
        if cfg is not None:
            from stabaudit.checks import canonical_threshold

            for name, value in cfg.thresholds.items():
                thresholds[canonical_threshold(name)] = value
        for item in threshold or []:
            key, value = parse_threshold(item)
            thresholds[key] = value
        if max_regression is not None:
            if not max_regression >= 0:
                raise UsageError(
                    f"--max-regression {max_regression}: expected a fraction >= 0, e.g. 0.1"
                )
            thresholds["max_regression"] = max_regression
        if not (eps >= 0 and eps < float("inf")):
            raise UsageError(f"--eps {eps}: expected a finite radius >= 0")
        samples = None
        if inputs is not None:
            from stabaudit.config.inputs import load_samples

            samples = load_samples(inputs)
        previous = None
        if baseline is not None:
            from stabaudit.report.baseline import load_baseline

            previous = load_baseline(baseline, str(model))
        from stabaudit.limits import parse_size, validate_timeout

        memory = parse_size(max_memory) if max_memory is not None else None
        time_limit = validate_timeout(timeout)
        shape = parse_shape(input_shape) if input_shape else (cfg.input_shape if cfg else None)
        fail = fail_on or (cfg.fail_on if cfg and cfg.fail_on else "error")
        try:
            fail_level = FailOn(fail)
        except ValueError:
            raise UsageError(
                f"--fail-on {fail!r}: expected error, warning or inconclusive"
            ) from None
        from stabaudit.engine import METHOD_CHOICES

        if method not in METHOD_CHOICES:
            raise UsageError(f"--method {method!r}: expected one of {', '.join(METHOD_CHOICES)}")
        if seed is not None and not 0 <= seed < 2**32:
            raise UsageError(f"--seed {seed}: expected an integer in [0, 2**32)")
        if not budget > 0:
            raise UsageError(f"--budget {budget}: expected a positive number of seconds")
        if device not in ("cpu", "cuda"):
            raise UsageError(f"--device {device!r}: expected cpu or cuda")
        severities = {k: Severity(v) for k, v in (cfg.severity.items() if cfg else [])}
        request = AuditRequest(
            path=model,
            input_shape=shape,
            thresholds=thresholds,
            severities=severities,
            fail_on=fail_level,
            seed=seed if seed is not None else (cfg.seed if cfg and cfg.seed is not None else 0),
            device=device,
            lower_budget_s=budget,
            budget_s=budget,
            method=method,
            baseline=previous,
            inputs=samples,
            eps=eps,
            max_memory=memory,
            timeout_s=time_limit,
        )
        report = audit(request)
        text = RENDERERS.get(fmt)(report)
        if output is not None:
            write_atomic(output, text)
        else:
            sys.stdout.write(text)
        return report.exit_code

    _run_guarded(debug, body)


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
    check_id: Annotated[str, typer.Argument(help="A check id such as SA101, or its name.")],
) -> None:
    """What a check proves, its inequality, its assumptions and its settings."""

    def body() -> int:
        from stabaudit.checks import CHECKS

        wanted = check_id.upper()
        for key in CHECKS:
            spec = CHECKS.get(key)
            if wanted in (spec.id, spec.name.upper()):
                default = (
                    "none" if spec.default_threshold is None else f"{spec.default_threshold:g}"
                )
                setting = (
                    f" (set with --threshold {spec.threshold_key}=VALUE)"
                    if spec.threshold_key
                    else ""
                )
                typer.echo(
                    f"{spec.id} {spec.name}  [default severity {spec.severity.value}, threshold {default}{setting}]\n"
                )
                typer.echo(spec.doc)
                return 0
        known = ", ".join(sorted(CHECKS))
        raise UsageError(f"unknown check {check_id!r}; known: {known}")

    _run_guarded(False, body)


@app.command()
def ops() -> None:
    """The operators understood, per loader."""

    def body() -> int:
        from stabaudit.loaders import supported_operators

        for loader, names in supported_operators().items():
            typer.echo(f"{loader} ({len(names)}):")
            typer.echo("  " + ", ".join(sorted(names)))
        return 0

    _run_guarded(False, body)


def main() -> None:
    import signal

    # Reports must be byte-identical across processes (same model, options and seed). Without
    # conditional numerical reproducibility, MKL may pick a different kernel path from one run
    # to the next and flip the last bits of a sum, which the witness search then amplifies;
    # pinned here, before torch loads MKL. A value set by the user wins.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()


if __name__ == "__main__":
    main()
