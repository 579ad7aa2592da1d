"""atheris target: the ONNX loader on raw bytes and on structured ModelProto mutations.

Input byte 0 chooses the mode: even -> the rest is the model file; odd -> the rest drives a seed
model and a recipe of tests/fuzz/onnx_seeds mutations. Any exception other than a one-line
StabauditError (and any MemoryError, hang or native crash) is a finding.
"""

from __future__ import annotations

import random
import sys

import _common  # noqa: F401  (puts the repository on sys.path)
import atheris

with atheris.instrument_imports(include=["stabaudit"]):
    import stabaudit.ir.executor
    import stabaudit.loaders.onnx
    import stabaudit.loaders.onnx_ops  # noqa: F401  (instrumented now; the loader imports them lazily)

from tests.fuzz import onnx_seeds  # noqa: E402

PATH = _common.scratch_file(".onnx")
SEEDS = sorted(onnx_seeds.SEEDS)
MUTATIONS = sorted(onnx_seeds.MUTATIONS)


def model_bytes(data: bytes) -> bytes:
    if not data or data[0] % 2 == 0:
        return data[1:]
    fdp = atheris.FuzzedDataProvider(data[1:])
    seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    recipe = [(MUTATIONS[fdp.ConsumeIntInRange(0, len(MUTATIONS) - 1)], fdp.ConsumeIntInRange(0, 2**30))
              for _ in range(fdp.ConsumeIntInRange(1, 3))]
    try:
        return onnx_seeds.mutated(seed, recipe)
    except Exception:  # a recipe the builder cannot serialize (too deep for protobuf): skip it
        return b""


def test_one_input(data: bytes) -> None:
    _common.exercise(model_bytes(data), PATH)


def seeds() -> list[tuple[str, bytes]]:
    out = [(f"seed-{name}", b"\x00" + onnx_seeds.SEEDS[name]().SerializeToString()) for name in SEEDS]
    out += [(f"sample-{p.name}", b"\x00" + p.read_bytes()) for p in sorted((_common.ROOT / "sample_models").glob("*.onnx"))]
    rng = random.Random(0)
    out += [(f"recipe-{i}", bytes([1]) + rng.randbytes(24)) for i in range(16)]
    return out


if __name__ == "__main__":
    _common.run("onnx", seeds(), test_one_input)
    sys.exit(0)
