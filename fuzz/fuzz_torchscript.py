"""atheris target: the TorchScript loader on raw archive bytes and on zip-level mutations.

Input byte 0 chooses the mode: even -> the rest is the archive file; odd -> the rest drives a
sample archive and a recipe of tests/fuzz/ts_seeds mutations. Archives are only ever opened by
torch.jit.load inside the loader. Any exception other than a one-line StabauditError is a finding.
"""

from __future__ import annotations

import random
import sys

import _common  # noqa: F401  (puts the repository on sys.path)
import atheris

with atheris.instrument_imports(include=["stabaudit"]):
    import stabaudit.ir.executor
    import stabaudit.loaders.torchscript
    import stabaudit.loaders.ts_ops  # noqa: F401  (instrumented now; the loader imports them lazily)

from tests.fuzz import ts_seeds  # noqa: E402

PATH = _common.scratch_file(".pt")
MUTATIONS = sorted(ts_seeds.MUTATIONS)


def archive_bytes(data: bytes) -> bytes:
    if not data or data[0] % 2 == 0:
        return data[1:]
    fdp = atheris.FuzzedDataProvider(data[1:])
    seed = ts_seeds.SEEDS[fdp.ConsumeIntInRange(0, len(ts_seeds.SEEDS) - 1)]
    recipe = [(MUTATIONS[fdp.ConsumeIntInRange(0, len(MUTATIONS) - 1)], fdp.ConsumeIntInRange(0, 2**30))
              for _ in range(fdp.ConsumeIntInRange(1, 3))]
    try:
        return ts_seeds.mutated(seed, recipe)
    except Exception:  # a recipe the zip writer refuses: skip it
        return b""


def test_one_input(data: bytes) -> None:
    _common.exercise(archive_bytes(data), PATH)


def seeds() -> list[tuple[str, bytes]]:
    out = [(f"sample-{name}", b"\x00" + (ts_seeds.SAMPLES / name).read_bytes()) for name in ts_seeds.SEEDS]
    rng = random.Random(0)
    out += [(f"recipe-{i}", bytes([1]) + rng.randbytes(24)) for i in range(16)]
    return out


if __name__ == "__main__":
    _common.run("torchscript", seeds(), test_one_input)
    sys.exit(0)
