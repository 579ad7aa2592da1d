"""Data files named by the config or the command line: sample inputs (.npz array `x`, else the
first, or .npy) and the training spec's data and second moments (.npz); never unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from stabaudit.analyses.training import Loss, Optimizer, TrainingSpec
from stabaudit.errors import UsageError


def _load(path: Path, label: str, kind: str) -> Any:
    """np.load without unpickling (allow_pickle=False); every failure a one-line UsageError."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{label} {path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{label} {path}: not a {kind} array file ({exc})") from None


def load_samples(path: str | Path) -> np.ndarray:
    """A float64 array [N, ...] of sample inputs; never unpickles (allow_pickle=False)."""
    p = Path(path)
    data = _load(p, "--inputs", ".npy or .npz")
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if not data.files:
                raise UsageError(f"--inputs {p}: the .npz file holds no array")
            array = data["x"] if "x" in data.files else data[data.files[0]]
    else:
        array = data
    if array.dtype.kind not in "fiu" or array.ndim == 0 or array.size == 0:
        raise UsageError(f"--inputs {p}: expected a non-empty numeric array [N, ...]")
    samples = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(samples)):
        raise UsageError(f"--inputs {p}: the samples hold NaN or Inf")
    return samples


# ---- the training spec's files (config and Python API) --------------------------------------------
def _npz(path: Path, what: str) -> dict[str, np.ndarray]:
    data = _load(path, f"training.{what}", ".npz")
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"training.{what} {path}: expected a .npz file with named arrays")
    with data:
        try:
            return {name: np.asarray(data[name]) for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UsageError(f"training.{what} {path}: unreadable array ({exc})") from None


def load_training_spec(
    *,
    learning_rate: float,
    data: Path,
    optimizer: str = "sgd",
    momentum: float | None = None,
    betas: tuple[float, float] | None = None,
    loss: str = "mse",
    second_moment: Path | None = None,
    noise: float | None = None,
    parameters: tuple[str, ...] | None = None,
) -> TrainingSpec:
    """A TrainingSpec from the config's values: ``data`` holds arrays x and y, ``second_moment``
    one array per parameter name. Never unpickles."""
    arrays = _npz(data, "data")
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise UsageError(f"training.data {data}: missing array(s) {', '.join(missing)} (expected x and y)")
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "fiu" or x.ndim == 0 or x.size == 0 or not np.all(np.isfinite(x)):
        raise UsageError(f"training.data {data}: x must be a non-empty finite numeric array [N, ...]")
    if y.dtype.kind not in "fiu" or y.ndim == 0 or y.shape[0] != x.shape[0] or not np.all(np.isfinite(y)):
        raise UsageError(
            f"training.data {data}: y must be a finite numeric array with one entry per sample of x "
            f"(x has {x.shape[0]}, y has shape {list(y.shape)})"
        )
    moments = None
    if second_moment is not None:
        moments = _npz(second_moment, "second_moment")
        for name, v in moments.items():
            if v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)) or np.any(v < 0):
                raise UsageError(
                    f"training.second_moment {second_moment}: {name!r} must be finite and >= 0"
                )
    return TrainingSpec(
        learning_rate=float(learning_rate),
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y),
        optimizer=Optimizer(optimizer),
        momentum=0.9 if momentum is None else float(momentum),
        betas=(0.9, 0.999) if betas is None else (float(betas[0]), float(betas[1])),
        loss=Loss(loss),
        second_moment=moments,
        noise=noise,
        parameters=tuple(parameters) if parameters is not None else None,
    )
