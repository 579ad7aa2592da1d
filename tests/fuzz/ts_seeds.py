"""Mutations of TorchScript archives (zip entries corrupted, truncated, renamed, dropped; hostile
stabaudit.json) for fuzzing the loader; the results are only ever opened by torch.jit.load."""

from __future__ import annotations

import io
import json
import random
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
Entries = list[tuple[str, bytes]]


def entries(data: bytes) -> Entries:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def pack(items: Entries, *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for name, content in items:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return buffer.getvalue()


def _pick(items: Entries, rng: random.Random, prefer: str = "") -> int:
    preferred = [i for i, (name, _) in enumerate(items) if prefer and prefer in name]
    return rng.choice(preferred or list(range(len(items))))


def corrupt_entry(items: Entries, rng: random.Random) -> None:
    """Bytes of one entry (code, pickles, version, tensor data) flipped or overwritten."""
    i = _pick(items, rng, rng.choice(["code/", ".pkl", "version", "data/", ""]))
    name, content = items[i]
    buf = bytearray(content or b"\x00")
    for _ in range(rng.randint(1, 6)):
        k = rng.randrange(len(buf))
        buf[k] = rng.choice([buf[k] ^ (1 << rng.randrange(8)), rng.randrange(256), ord(rng.choice("()[]:,.0123456789"))])
    items[i] = (name, bytes(buf))


def truncate_entry(items: Entries, rng: random.Random) -> None:
    i = _pick(items, rng, rng.choice(["code/", ".pkl", "data/"]))
    name, content = items[i]
    items[i] = (name, content[: rng.randrange(len(content) or 1)])


def rename_entry(items: Entries, rng: random.Random) -> None:
    i = _pick(items, rng)
    name, content = items[i]
    new = rng.choice([name + "x", name.replace("archive/", "other/"), "archive/" + "../" * 3 + "evil",
                      name.upper(), "/abs/" + name, name.replace("data/", "data/9")])
    items[i] = (new, content)


def drop_entry(items: Entries, rng: random.Random) -> None:
    del items[_pick(items, rng, rng.choice(["code/", ".pkl", "data/", "version"]))]


def duplicate_entry(items: Entries, rng: random.Random) -> None:
    i = _pick(items, rng)
    items.insert(rng.randrange(len(items) + 1), (items[i][0], items[rng.randrange(len(items))][1]))


def hostile_extra(items: Entries, rng: random.Random) -> None:
    """stabaudit.json with a huge, negative, nested or non-numeric input shape."""
    meta = rng.choice([
        {"input_shape": [1, 2**40]}, {"input_shape": [2**31, 2**31]}, {"input_shape": [-1, 64]},
        {"input_shape": [1, 0]}, {"input_shape": "1,64"}, {"input_shape": [[1]]}, {"input_shapes": [[1, 64], [2]]},
        {"input_shape": [1.5, 64]}, {"input_shape": [True, 64]}, [], {"input_shape": [1] * 64},
    ])
    text = json.dumps(meta).encode() if rng.random() < 0.9 else b"\xff{[" * 10
    items[:] = [(n, c) for n, c in items if not n.endswith("stabaudit.json")]
    items.append(("archive/extra/stabaudit.json", text))


def version_entry(items: Entries, rng: random.Random) -> None:
    items[:] = [(n, c) for n, c in items if not n.endswith("/version")]
    items.append(("archive/version", rng.choice([b"999\n", b"-1\n", b"x", b"", b"1" * 40])))


MUTATIONS: dict[str, Callable[[Entries, random.Random], None]] = {
    f.__name__: f for f in (
        corrupt_entry, truncate_entry, rename_entry, drop_entry, duplicate_entry, hostile_extra, version_entry,
    )
}
SEEDS = ("mlp.pt", "cnn.pt", "resnet.pt")


def mutated(seed: str, recipe: list[tuple[str, int]]) -> bytes:
    """The sample archive ``seed`` after the zip-level mutations ``recipe`` [(mutation, rng seed), ...]."""
    items = entries((SAMPLES / seed).read_bytes())
    for name, value in recipe:
        MUTATIONS[name](items, random.Random(value))
    return pack(items)
