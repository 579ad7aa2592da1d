"""atheris target: the static gate and the TorchScript loader on mutated code tables and constants.pkl.

Input byte 0 chooses the mode: 0 mod 3 -> the rest drives a sample archive and a recipe of
tests/fuzz/ts_code_seeds mutations; 1 -> the rest replaces the text of one code table
(code/__torch__/...py); 2 -> the rest is constants.pkl. The gate is on, as by default. A finding
is any exception other than a one-line StabauditError, a hostile call the gate let through (in
the code that still parses), or the sentinel file appearing (something ran a hostile call).
"""

from __future__ import annotations

import random
import sys

import _common  # noqa: F401  (puts the repository on sys.path)
import atheris

with atheris.instrument_imports(include=["stabaudit"]):
    import stabaudit.ir.executor
    import stabaudit.loaders.torchscript
    import stabaudit.loaders.ts_gate
    import stabaudit.loaders.ts_ops  # noqa: F401  (instrumented now; the loader imports them lazily)

from tests.fuzz import ts_code_seeds, ts_seeds  # noqa: E402

PATH = _common.scratch_file(".pt")
SENTINEL = PATH.parent.parent / "sentinel"
MUTATIONS = sorted(ts_code_seeds.MUTATIONS)


def archive_bytes(data: bytes) -> bytes:
    if not data:
        return b""
    mode = data[0] % 3
    if mode == 0:
        fdp = atheris.FuzzedDataProvider(data[1:])
        seed = ts_code_seeds.SEEDS[fdp.ConsumeIntInRange(0, len(ts_code_seeds.SEEDS) - 1)]
        recipe = [(MUTATIONS[fdp.ConsumeIntInRange(0, len(MUTATIONS) - 1)], fdp.ConsumeIntInRange(0, 2**30))
                  for _ in range(fdp.ConsumeIntInRange(1, 3))]
        return ts_code_seeds.mutated(seed, recipe, str(SENTINEL))
    if len(data) < 3:
        return b""
    # bytes 1 and 2: the sample archive and the code table; the rest: the new content
    seed = ts_code_seeds.SEEDS[data[1] % len(ts_code_seeds.SEEDS)]
    items = ts_seeds.entries((ts_seeds.SAMPLES / seed).read_bytes())
    if mode == 1:
        code = [i for i, (name, _) in enumerate(items) if name.endswith(".py") and "/code/" in name]
        i = code[data[2] % len(code)]
        items[i] = (items[i][0], data[3:])
    else:
        items = [(n, c) for n, c in items if not n.endswith("/constants.pkl")]
        items.append(("archive/constants.pkl", data[3:]))
    return ts_seeds.pack(items)


def test_one_input(data: bytes) -> None:
    payload = archive_bytes(data)
    SENTINEL.unlink(missing_ok=True)
    loaded = _common.exercise(payload, PATH)
    if SENTINEL.exists():
        raise AssertionError("a hostile call of the archive ran: the sentinel file appeared")
    hostile = ts_code_seeds.hostile_calls(payload) if loaded else []
    if hostile:
        raise AssertionError(f"the static gate let {hostile} through")


def seeds() -> list[tuple[str, bytes]]:
    rng = random.Random(0)
    out = [(f"recipe-{i}", bytes([0]) + rng.randbytes(24)) for i in range(24)]
    for k, name in enumerate(ts_code_seeds.SEEDS):
        items = ts_seeds.entries((ts_seeds.SAMPLES / name).read_bytes())
        code = [c for n, c in items if n.endswith(".py") and "/code/" in n]
        out += [(f"code-{name}-{i}", bytes([1, k, i]) + c) for i, c in enumerate(code)]
        out += [(f"constants-{name}", bytes([2, k, 0]) + c) for n, c in items if n.endswith("/constants.pkl")]
    return out


if __name__ == "__main__":
    _common.run("ts_code", seeds(), test_one_input)
    sys.exit(0)
