"""The soundness suite loads TorchScript archives in process.

Its subject is the figures, not the loader: an isolated load (loaders.ts_child) costs an
interpreter start and ``import torch`` per archive (2 to 3 s), and tests/loaders/test_ts_child.py
shows that the isolated load's report is the in-process load's byte for byte. A load that asks for
module jobs (which need the child) still goes through the isolated loader.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stabaudit.loaders import ts_child
from stabaudit.loaders.torchscript import load_torchscript


@pytest.fixture(autouse=True)
def _torchscript_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    isolated = ts_child.load_isolated

    def load(path, *, input_shape=None, trust_code=False, seed=0, jobs=None, cuda=False, arguments=None, **kw):  # type: ignore[no-untyped-def]
        if jobs or cuda or kw:
            return isolated(path, input_shape=input_shape, trust_code=trust_code, seed=seed, jobs=jobs, cuda=cuda,
                            arguments=arguments, **kw)
        return load_torchscript(path, input_shape=input_shape, trust_code=trust_code, arguments=arguments)

    monkeypatch.setattr(ts_child, "load_isolated", load)
    yield
