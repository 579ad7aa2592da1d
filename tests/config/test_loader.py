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


def test_config_above_the_size_limit_is_refused_at_once(tmp_path):
    import time

    from stabaudit.config.loader import MAX_CONFIG_BYTES

    big = tmp_path / "big.yaml"
    line = "- {path: m.onnx, thresholds: {lipschitz: 1.0e3}}\n"
    big.write_text("models:\n" + line * (6 * 1024**2 // len(line)))  # 6 MB of valid YAML
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"big.yaml: the config holds \d+ bytes, above the limit of {MAX_CONFIG_BYTES}"):
        load_config(big)
    assert time.perf_counter() - start < 2.0
    at_limit = tmp_path / "limit.yaml"
    at_limit.write_text("seed: 1\n" + "#" * (MAX_CONFIG_BYTES - 9) + "\n")
    assert at_limit.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(at_limit).defaults.seed == 1
    at_limit.write_text("seed: 1\n" + "#" * (MAX_CONFIG_BYTES - 8) + "\n")
    with pytest.raises(ConfigError, match="above the limit"):
        load_config(at_limit)


def test_the_c_yaml_parser_is_used_and_keeps_line_numbers(tmp_path):
    import yaml

    from stabaudit.config.loader import _loader

    if yaml.__with_libyaml__:
        assert issubclass(_loader(), yaml.CSafeLoader)
    cfg = load_config(write(tmp_path, "thresholds:\n  lipschitz: 1e3\n"))
    assert cfg.defaults.thresholds == {"lipschitz": 1000.0}  # YAML 1.2 exponent floats still numbers
    # the line of each syntax error, as the pure-Python parser gives it
    for text, line in (("seed: 1\nthresholds:\n  lipschitz: [1\n  x: y: z\n", 4), ("a: 1\nb: [\n", 3),
                       ("a: 1\n  b: 2\n", 2), ("seed: 1\nc: d: e\n", 2)):
        with pytest.raises(ConfigError, match=rf"audit.yaml:{line}: invalid YAML"):
            load_config(write(tmp_path, text))


@pytest.mark.parametrize(("text", "pattern"), [
    ('models:\n  - path: "a\\0b.onnx"\n', r"audit.yaml:2: models\[0\].path: the path holds a control character \(NUL"),
    ('inputs: "x\\ny.npz"\n', r"audit.yaml:1: inputs: the path holds a control character"),
    ('trajectory:\n  - path: "c\\e.pt"\n', r"audit.yaml:2: trajectory\[0\].path: the path holds a control character"),
    ('waivers:\n  - {check: SA101, reason: r, model: "*\\x07"}\n', r"audit.yaml:2: waivers\[0\].model: the path holds"),
])
def test_control_characters_in_config_paths_are_refused(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


def test_config_path_with_a_control_character_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="control character") as info:
        load_config(tmp_path / "a\x00b.yaml")
    assert info.value.exit_code == 2


def test_forward_arguments_merge_key_by_key(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    cfg = load_config(write(tmp_path, "defaults:\n  arguments: {sr: 16000, mode: fast, dims: [1, 2]}\nmodels:\n"
                                      "  - path: m.pt\n    arguments: {sr: 8000, mask: null}\n"))
    assert cfg.defaults.arguments == {"sr": 16000, "mode": "fast", "dims": [1, 2]}
    merged = cfg.defaults.merged(cfg.models[0].settings)
    assert merged.arguments == {"sr": 8000, "mode": "fast", "dims": [1, 2], "mask": None}
    assert Settings().merged(Settings()).arguments is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arguments: [1, 2]\n", "audit.yaml:1: arguments: expected a mapping NAME: value (forward's non-tensor "
                                "arguments of a TorchScript model, integer and bool inputs of an ONNX model)"),
        ("arguments: {sr: {a: 1}}\n", "audit.yaml:1: arguments.sr: expected a number, true/false, a string, null or "
                                      "a list of those"),
        ("arguments: {sr: [[1]]}\n", "audit.yaml:1: arguments.sr: expected a number, true/false, a string, null or "
                                     "a list of those"),
        ("arguments: {'bad name': 1}\n", "audit.yaml:1: arguments.bad name: expected an argument name (letters, "
                                         "digits and _, not starting with a digit)"),
    ],
)
def test_forward_argument_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).endswith(message)
