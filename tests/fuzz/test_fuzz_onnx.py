"""Property-based fuzzing of the ONNX loader: mutated bytes and mutated ModelProtos never crash it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import onnx_seeds
from tests.fuzz.harness import check_cli, load_cleanly

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_NAMES = ("mlp.onnx", "cnn.onnx", "resnet.onnx")
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def _seed_bytes(name: str) -> bytes:
    if name in onnx_seeds.SEEDS:
        return onnx_seeds.SEEDS[name]().SerializeToString()
    return (ROOT / "sample_models" / name).read_bytes()


SOURCES = (*onnx_seeds.SEEDS, *SAMPLE_NAMES)


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """Bit flips, overwritten bytes, truncation, or a slice spliced in from another model."""
    data = bytearray(_seed_bytes(draw(st.sampled_from(SOURCES))))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "splice"]))
        position = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[max(position, 1):]
        else:
            other = _seed_bytes(draw(st.sampled_from(SOURCES)))
            start = draw(st.integers(0, len(other) - 1))
            data[position:position + draw(st.integers(1, 64))] = other[start:start + draw(st.integers(1, 64))]
    return bytes(data)


recipes = st.lists(
    st.tuples(st.sampled_from(sorted(onnx_seeds.MUTATIONS)), st.integers(0, 2**30)), min_size=1, max_size=3
)


@settings(FUZZ, max_examples=60)
@given(data=byte_mutations())
def test_mutated_bytes_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(data)
    load_cleanly(path)


@settings(FUZZ, max_examples=120)
@given(seed=st.sampled_from(sorted(onnx_seeds.SEEDS)), recipe=recipes)
def test_structured_mutations_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, seed: str,
                                             recipe: list[tuple[str, int]]) -> None:
    folder = tmp_path_factory.mktemp("onnx")
    (folder / "w.bin").write_bytes(bytes(64))  # a file beside the model for external-data mutations
    path = folder / "model" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(onnx_seeds.mutated(seed, recipe))
    load_cleanly(path)


@settings(FUZZ, max_examples=10)
@given(data=byte_mutations())
def test_mutated_bytes_through_the_cli(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(data)
    check_cli(path)


@settings(FUZZ, max_examples=10)
@given(recipe=st.lists(st.tuples(st.sampled_from(["corrupt_dim", "wrong_dtype", "dangling_name", "cycle",
                                                  "wrong_attribute", "missing_initializer", "bad_raw_data",
                                                  "huge_declared_tensor", "random_op"]),
                                 st.integers(0, 2**30)), min_size=1, max_size=2))
def test_structured_mutations_through_the_cli(tmp_path_factory: pytest.TempPathFactory,
                                              recipe: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    path.write_bytes(onnx_seeds.mutated("mlp", recipe))
    check_cli(path)
