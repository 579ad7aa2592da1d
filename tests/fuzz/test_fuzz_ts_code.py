"""Property-based fuzzing of TorchScript archive code: mutated code tables and constants.pkl are
refused by the static gate or load, never run a hostile call (its sentinel file never appears),
never end in an internal error or a hang."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import ts_code_seeds
from tests.fuzz.harness import check_cli, load_cleanly

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
recipes = st.lists(st.tuples(st.sampled_from(sorted(ts_code_seeds.MUTATIONS)), st.integers(0, 2**30)),
                   min_size=1, max_size=3)


def exercise(folder: Path, seed: str, recipe: list[tuple[str, int]]) -> None:
    """The property, shared with fuzz/fuzz_ts_code.py: one mutated archive through the loader."""
    sentinel = folder / "sentinel"
    path = folder / "model.pt"
    data = ts_code_seeds.mutated(seed, recipe, str(sentinel))
    path.write_bytes(data)
    refused = load_cleanly(path)
    assert not sentinel.exists(), f"a hostile call ran: {recipe}"
    hostile = ts_code_seeds.hostile_calls(data)
    assert refused is not None or not hostile, f"the gate let {hostile} through: {seed} {recipe}"


@settings(FUZZ, max_examples=80)
@given(seed=st.sampled_from(ts_code_seeds.SEEDS), recipe=recipes)
def test_mutated_code_is_refused_or_loads(tmp_path_factory: pytest.TempPathFactory, seed: str,
                                          recipe: list[tuple[str, int]]) -> None:
    exercise(tmp_path_factory.mktemp("tscode"), seed, recipe)


@settings(FUZZ, max_examples=4)
@given(recipe=recipes)
def test_mutated_code_through_the_cli(tmp_path_factory: pytest.TempPathFactory, recipe: list[tuple[str, int]]) -> None:
    folder = tmp_path_factory.mktemp("tscode")
    path = folder / "model.pt"
    path.write_bytes(ts_code_seeds.mutated("mlp.pt", recipe, str(folder / "sentinel")))
    check_cli(path)
    assert not (folder / "sentinel").exists()
