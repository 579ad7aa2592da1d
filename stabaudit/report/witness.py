"""Large witness inputs out of the JSON report: a sidecar .npz beside the report, or a digest and norms."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import replace
from pathlib import Path

from stabaudit.report.model import BatchReport, ModelError, Report, Witness, WitnessStore

# A witness with more entries than this (per input) leaves the JSON: a 3x320x320 input is 307,200
# floats, about 6 MB of JSON text per array.
WITNESS_INLINE_MAX = 1000


def sidecar_path(report_path: Path) -> Path:
    """report.json -> report.witness.npz, in the report's directory."""
    return report_path.with_name(f"{report_path.stem}.witness.npz")


def witness_digest(x: tuple[float, ...], y: tuple[float, ...]) -> str:
    """sha256 of x then y as little-endian float64 bytes (the arrays the sidecar stores)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(np.asarray(x, dtype="<f8").tobytes())
    h.update(np.asarray(y, dtype="<f8").tobytes())
    return h.hexdigest()


def _norm(v: tuple[float, ...]) -> float:
    return math.sqrt(math.fsum(t * t for t in v))


def _outside(w: Witness, file: str | None, prefix: str) -> tuple[Witness, dict[str, tuple[float, ...]]]:
    names: tuple[str, ...] = (f"{prefix}x", f"{prefix}y") if w.y else (f"{prefix}x",)
    store = WitnessStore(
        file=file,
        arrays=names if file is not None else (),
        entries=len(w.x),
        sha256=witness_digest(w.x, w.y),
        x_norm=_norm(w.x),
        y_norm=_norm(w.y) if w.y else None,
    )
    arrays = {names[0]: w.x} | ({names[1]: w.y} if w.y else {})
    return replace(w, x=(), y=(), stored=store), arrays


def externalize(
    report: Report, file: str | None, prefix: str = ""
) -> tuple[Report, dict[str, tuple[float, ...]]]:
    """The report with a witness above WITNESS_INLINE_MAX entries taken out (x and y empty, a
    WitnessStore in their place naming ``file``, or only the digest and norms when ``file`` is
    None) and the arrays to store in the sidecar (empty when nothing was taken out)."""
    arrays: dict[str, tuple[float, ...]] = {}
    w = report.lipschitz.witness
    if w is not None and w.stored is None and max(len(w.x), len(w.y)) > WITNESS_INLINE_MAX:
        small, arrays = _outside(w, file, prefix)
        report = replace(report, lipschitz=replace(report.lipschitz, witness=small))
    # the domain bracket's witness (a pair inside the domain: arrays domain_x, domain_y; a jacobian witness: domain_x)
    d = report.domain_lipschitz
    w = d.witness if d is not None else None
    if d is not None and w is not None and w.stored is None and max(len(w.x), len(w.y)) > WITNESS_INLINE_MAX:
        small, more = _outside(w, file, prefix + "domain_")
        report = replace(report, domain_lipschitz=replace(d, witness=small))
        arrays |= more
    # the residual blocks' witnesses (pairs of branch inputs): residual<i>_x, residual<i>_domain_x, ...
    blocks = []
    for i, b in enumerate(report.residual_blocks):
        w = b.lip_f_witness
        if w is not None and w.stored is None and max(len(w.x), len(w.y)) > WITNESS_INLINE_MAX:
            small, more = _outside(w, file, prefix + f"residual{i}_")
            b = replace(b, lip_f_witness=small)
            arrays |= more
        w = b.growth_witness
        if w is not None and w.stored is None and max(len(w.x), len(w.y)) > WITNESS_INLINE_MAX:
            small, more = _outside(w, file, prefix + f"residual{i}_growth_")
            b = replace(b, growth_witness=small)
            arrays |= more
        w = b.domain.witness if b.domain is not None else None
        if b.domain is not None and w is not None and w.stored is None and max(len(w.x), len(w.y)) > WITNESS_INLINE_MAX:
            small, more = _outside(w, file, prefix + f"residual{i}_domain_")
            b = replace(b, domain=replace(b.domain, witness=small))
            arrays |= more
        blocks.append(b)
    if any(new is not old for new, old in zip(blocks, report.residual_blocks, strict=True)):
        report = replace(report, residual_blocks=tuple(blocks))
    return report, arrays


def externalize_batch(batch: BatchReport, file: str | None) -> tuple[BatchReport, dict[str, tuple[float, ...]]]:
    """externalize for every model of a batch, the arrays of model i named m<i>_x, m<i>_y."""
    models: list[Report | ModelError] = []
    arrays: dict[str, tuple[float, ...]] = {}
    for i, m in enumerate(batch.models):
        if isinstance(m, Report):
            m, more = externalize(m, file, prefix=f"m{i}_")
            arrays |= more
        models.append(m)
    return replace(batch, models=tuple(models)), arrays


def npz_bytes(arrays: dict[str, tuple[float, ...]]) -> bytes:
    """The sidecar's content: each array float64, uncompressed (np.load reads it)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype="<f8") for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()
