"""The training spec's data files: arrays x and y and second moments from .npz, never unpickled."""

from __future__ import annotations

import numpy as np
import pytest

from stabaudit.analyses.training import Loss, Optimizer
from stabaudit.config.inputs import load_training_spec
from stabaudit.errors import UsageError


def test_load_training_spec_reads_npz_and_refuses_bad_files(tmp_path):
    x, y = np.ones((3, 2)), np.zeros((3, 1))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "no_y.npz", x=x)
    np.save(tmp_path / "a.npy", x)
    spec = load_training_spec(learning_rate=0.5, data=tmp_path / "d.npz", optimizer="momentum", momentum=0.5)
    assert spec.optimizer is Optimizer.MOMENTUM and spec.momentum == 0.5 and spec.loss is Loss.MSE
    np.testing.assert_array_equal(spec.x, x)
    with pytest.raises(UsageError, match="missing array"):
        load_training_spec(learning_rate=0.5, data=tmp_path / "no_y.npz")
    with pytest.raises(UsageError, match="expected a .npz"):
        load_training_spec(learning_rate=0.5, data=tmp_path / "a.npy")
    with pytest.raises(UsageError, match="no such file"):
        load_training_spec(learning_rate=0.5, data=tmp_path / "missing.npz")
