"""Property-based fuzzing of the TorchScript loader: mutated archives are opened by torch.jit.load
only (never executed otherwise) and end in a model or a one-line refusal."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import ts_seeds
from tests.fuzz.harness import check_cli, load_cleanly

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
recipes = st.lists(st.tuples(st.sampled_from(sorted(ts_seeds.MUTATIONS)), st.integers(0, 2**30)),
                   min_size=1, max_size=3)


@st.composite
def raw_mutations(draw: st.DrawFn) -> bytes:
    """Bit flips or a truncation of the archive file itself (central directory included)."""
    data = bytearray((ts_seeds.SAMPLES / draw(st.sampled_from(ts_seeds.SEEDS))).read_bytes())
    if draw(st.booleans()):
        del data[draw(st.integers(1, len(data) - 1)):]
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@settings(FUZZ, max_examples=60)
@given(seed=st.sampled_from(ts_seeds.SEEDS), recipe=recipes)
def test_mutated_archives_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, seed: str,
                                         recipe: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    path.write_bytes(ts_seeds.mutated(seed, recipe))
    load_cleanly(path)


@settings(FUZZ, max_examples=30)
@given(data=raw_mutations())
def test_damaged_archive_files_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    path.write_bytes(data)
    load_cleanly(path)


@settings(FUZZ, max_examples=8)
@given(recipe=recipes)
def test_mutated_archives_through_the_cli(tmp_path_factory: pytest.TempPathFactory,
                                          recipe: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("ts") / "model.pt"
    path.write_bytes(ts_seeds.mutated("mlp.pt", recipe))
    check_cli(path)
