"""Sample inputs for the data-dependent checks: .npz (array `x`, else the first) or .npy files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from stabaudit.errors import UsageError


def load_samples(path: str | Path) -> np.ndarray:
    """A float64 array [N, ...] of sample inputs; never unpickles (allow_pickle=False)."""
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"--inputs {p}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"--inputs {p}: not a .npy or .npz array file ({exc})") from None
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
