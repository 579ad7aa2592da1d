"""Property-based fuzzing of the audit YAML loader: any text gives a config or a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabaudit.config import load_config, resolve_models
from stabaudit.errors import ConfigError
from tests.fuzz.harness import check_error, time_limit

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
VALID = {"thresholds": {"lipschitz": 10, "SA103": 0.5}, "severity": {"SA102": "info"}, "seed": 3,
         "input_shape": [1, 3, 8, 8], "fail_on": "warning"}
YAML_BITS = ["thresholds:", "severity:", "seed:", "input_shape:", "fail_on:", "  ", "\n", "- ", "[", "]", "{", "}",
             ": ", ", ", "&a ", "*a", "!!int ", "!!float ", "!!binary ", "!!python/object:os.system ", "? ", "<<: ",
             "---\n", "...\n", "'", '"', "#", "|\n", ">\n", ".nan", ".inf", "-1", "1e400", "0x1F", "~", "null",
             "yes", "SA101", "lipschitz", "error", "\t", "%YAML 1.1\n", "\x00", "\ufeff"]


def _load(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "audit.yaml"
    path.write_bytes(data)
    with time_limit(20):
        try:
            load_config(path)
        except ConfigError as exc:
            check_error(exc)


@settings(FUZZ, max_examples=150)
@given(text=st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=8), max_size=30).map("".join))
def test_yaml_ish_text_loads_or_refuses(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _load(tmp_path_factory.mktemp("cfg"), text.encode("utf-8", "surrogatepass"))


@settings(FUZZ, max_examples=50)
@given(data=st.binary(max_size=200))
def test_random_bytes_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _load(tmp_path_factory.mktemp("cfg"), data)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(FUZZ, max_examples=150)
@given(key_path=st.lists(st.sampled_from(["thresholds", "severity", "seed", "input_shape", "fail_on",
                                          "lipschitz", "SA102", "other"]), min_size=1, max_size=3),
       value=values, flow=st.booleans())
def test_structured_mutations_of_a_valid_config(tmp_path_factory: pytest.TempPathFactory, key_path: list[str],
                                                value: object, flow: bool) -> None:
    """A value somewhere in a valid config replaced by any YAML value (nested lists, maps, NaN, ...)."""
    config: dict = yaml.safe_load(yaml.safe_dump(VALID))
    node = config
    for key in key_path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[key_path[-1]] = value
    _load(tmp_path_factory.mktemp("cfg"), yaml.safe_dump(config, default_flow_style=flow).encode())


VALID_BATCH = {"defaults": {"thresholds": {"lipschitz": 100}, "severity": {"SA102": "info"}, "max_memory": "8G"},
               "models": [{"path": "m.onnx", "input_shape": [1, 4], "checks": {"disable": ["SA303"]},
                           "method": "sdp", "budget": 5, "eps": 0.1}],
               "waivers": [{"check": "SA101", "model": "*.onnx", "reason": "r", "expires": "2027-03-01"}]}


@settings(FUZZ, max_examples=100)
@given(key_path=st.lists(st.sampled_from(["defaults", "models", "waivers", "thresholds", "checks", "disable",
                                          "path", "expires", "max_memory", "method", "budget", "other"]),
                         min_size=1, max_size=3),
       value=values, flow=st.booleans())
def test_structured_mutations_of_a_batch_config(tmp_path_factory: pytest.TempPathFactory, key_path: list[str],
                                                value: object, flow: bool) -> None:
    """The batch form, a value replaced somewhere (inside the first model or waiver for list keys)."""
    config: dict = yaml.safe_load(yaml.safe_dump(VALID_BATCH))
    node = config
    for key in key_path[:-1]:
        child = node.get(key)
        if isinstance(child, list) and child and isinstance(child[0], dict):
            node = child[0]
            continue
        if not isinstance(child, dict):
            node[key] = {}
        node = node[key]
    node[key_path[-1]] = value
    tmp_path = tmp_path_factory.mktemp("cfg")
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "batch.yaml"
    path.write_bytes(yaml.safe_dump(config, default_flow_style=flow).encode())
    with time_limit(20):
        try:
            resolve_models(load_config(path))
        except ConfigError as exc:
            check_error(exc)
