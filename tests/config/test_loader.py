"""The audit YAML: accepted settings and errors that name file, line and key path."""

from __future__ import annotations

import pytest

from stabaudit.config import Settings, load_config
from stabaudit.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "audit.yaml"
    p.write_text(text)
    return p


def test_valid_config(tmp_path):
    cfg = load_config(write(tmp_path, "thresholds:\n  lipschitz: 10\n  SA103: 0.5\nseed: 3\ninput_shape: [1, 3, 8, 8]\nfail_on: warning\nseverity: {SA102: info}\n"))
    assert cfg.defaults.thresholds == {"lipschitz": 10.0, "SA103": 0.5}
    assert cfg.defaults.seed == 3 and cfg.defaults.input_shape == (1, 3, 8, 8) and cfg.defaults.fail_on == "warning"
    assert cfg.defaults.severity == {"SA102": "info"}
    assert cfg.models == () and cfg.waivers == ()


def test_empty_config(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.defaults == Settings() and cfg.models == () and cfg.waivers == ()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("thresholds:\n  lipschitz: high\n", r"audit.yaml:2: thresholds.lipschitz: expected a number"),
        ("treshold:\n  lipschitz: 1\n", r"audit.yaml:1: treshold: unknown key \(did you mean 'thresholds'\?\)"),
        ("seed: -1\n", r"audit.yaml:1: seed: expected a non-negative integer"),
        ("input_shape: [1, 0]\n", r"input_shape: expected a list of positive integers"),
        ("fail_on: always\n", r"fail_on: expected one of"),
        ("thresholds: [1, 2]\n", r"thresholds: expected a mapping"),
        ("- 1\n- 2\n", r"expected a mapping of settings"),
        ("thresholds: {a: 1\n", r"invalid YAML"),
        ("seed: 1\nseed: 2\n", r"audit.yaml:2: seed: duplicate key"),
        ("thresholds:\n  lipschitz: 1\n  lipschitz: 2\n", r"audit.yaml:3: thresholds.lipschitz: duplicate key"),
        ("severity: {SA101: fatal}\n", r"severity.SA101: expected one of"),
    ],
)
def test_config_errors(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
