"""The config schema: batch form, merging, glob expansion, waivers, and errors naming file, line, key path."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from stabaudit.config import (
    METHODS,
    ConfigFile,
    Settings,
    WaiverEntry,
    find_default_config,
    load_config,
    resolve_models,
)
from stabaudit.errors import ConfigError
from stabaudit.report.model import Waiver

BATCH = """\
defaults:
  thresholds: {lipschitz: 100}
  severity: {SA102: info}
  seed: 7
models:
  - path: models/classifier.onnx
  - path: "checkpoints/*.pt"
    input_shape: [1, 3, 32, 32]
    thresholds: {lipschitz: 10, SA103: 0.5}
    severity: {SA101: warning}
    checks: {disable: [SA303]}
    method: sdp
    budget: 30
    timeout: 60.5
    eps: 0.01
    inputs: samples.npz
    max_memory: 1K
    fail_on: warning
  - path: legacy/*.onnx
    checks: {disable: [SA101]}
waivers:
  - {check: SA101, model: "legacy/*.onnx", reason: "known", expires: 2027-03-01}
  - {check: SA102, reason: "everywhere", expires: "2027-03-02"}
  - {check: SA103, model: "checkpoints/b.pt", reason: "one file"}
"""


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write(tmp_path: Path, text: str, name: str = "batch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    touch(tmp_path, "models/classifier.onnx", "checkpoints/b.pt", "checkpoints/a.pt", "checkpoints/notes.txt",
          "legacy/old.onnx", "samples.npz")
    return write(tmp_path, BATCH)


def test_batch_config_loads(batch: Path) -> None:
    cfg = load_config(batch)
    assert isinstance(cfg, ConfigFile) and cfg.path == batch
    assert cfg.defaults == Settings(thresholds={"lipschitz": 100.0}, severity={"SA102": "info"}, seed=7)
    assert [(m.path, m.line) for m in cfg.models] == [
        ("models/classifier.onnx", 6), ("checkpoints/*.pt", 7), ("legacy/*.onnx", 19)]
    second = cfg.models[1].settings
    assert second == Settings(
        thresholds={"lipschitz": 10.0, "SA103": 0.5}, severity={"SA101": "warning"}, input_shape=(1, 3, 32, 32),
        disable=frozenset({"SA303"}), method="sdp", budget=30.0, timeout=60.5, eps=0.01,
        inputs=batch.parent.absolute() / "samples.npz", max_memory=1024, fail_on="warning")
    assert cfg.models[0].settings == Settings()
    assert cfg.waivers == (
        WaiverEntry(check="SA101", model="legacy/*.onnx", reason="known", expires=datetime.date(2027, 3, 1)),
        WaiverEntry(check="SA102", model="*", reason="everywhere", expires=datetime.date(2027, 3, 2)),
        WaiverEntry(check="SA103", model="checkpoints/b.pt", reason="one file", expires=None),
    )


def test_resolve_models_expands_globs_merges_and_matches_waivers(batch: Path) -> None:
    base = batch.parent.absolute()
    resolved = resolve_models(load_config(batch))
    assert [(r.path, r.entry) for r in resolved] == [
        (base / "models/classifier.onnx", "models[0]"),
        (base / "checkpoints/a.pt", "models[1]"),  # sorted, the .txt not matched
        (base / "checkpoints/b.pt", "models[1]"),
        (base / "legacy/old.onnx", "models[2]"),
    ]
    everywhere = Waiver(check="SA102", reason="everywhere", expires="2027-03-02", model="*")
    assert resolved[0].waivers == (everywhere,)
    assert resolved[1].waivers == (everywhere,)
    assert resolved[2].waivers == (everywhere, Waiver(check="SA103", reason="one file", expires="", model="checkpoints/b.pt"))
    assert resolved[3].waivers == (Waiver(check="SA101", reason="known", expires="2027-03-01", model="legacy/*.onnx"),
                                   everywhere)
    # defaults merged under each entry: entry wins, thresholds and severity merge key-wise, disable unions
    assert resolved[0].settings == Settings(thresholds={"lipschitz": 100.0}, severity={"SA102": "info"}, seed=7)
    assert resolved[1].settings.thresholds == {"lipschitz": 10.0, "SA103": 0.5}
    assert resolved[1].settings.severity == {"SA102": "info", "SA101": "warning"}
    assert resolved[1].settings.seed == 7 and resolved[1].settings.method == "sdp"
    assert resolved[3].settings.disable == frozenset({"SA101"})


def test_each_file_once_first_entry_wins(tmp_path: Path) -> None:
    touch(tmp_path, "m/a.onnx", "m/b.onnx")
    cfg = write(tmp_path, "models:\n  - path: m/b.onnx\n    seed: 1\n  - path: m/*.onnx\n    seed: 2\n")
    resolved = resolve_models(load_config(cfg))
    base = tmp_path.absolute()
    assert [(r.path, r.entry, r.settings.seed) for r in resolved] == [
        (base / "m/b.onnx", "models[0]", 1), (base / "m/a.onnx", "models[1]", 2)]


def test_waiver_glob_matches_the_absolute_path(tmp_path: Path) -> None:
    touch(tmp_path, "sub/a.onnx", "sub/b.onnx")
    absolute = (tmp_path.absolute() / "sub" / "a.onnx").as_posix()
    cfg = write(tmp_path, f"models:\n  - path: sub/*.onnx\nwaivers:\n  - {{check: SA101, model: '{absolute}', reason: r}}\n")
    resolved = resolve_models(load_config(cfg))
    assert [len(r.waivers) for r in resolved] == [1, 0]


def test_merged_semantics() -> None:
    low = Settings(thresholds={"a": 1.0, "b": 2.0}, severity={"SA101": "error"}, seed=1, method="auto",
                   disable=frozenset({"SA101"}), budget=5.0)
    high = Settings(thresholds={"b": 3.0}, severity={"SA102": "info"}, seed=2, disable=frozenset({"SA202"}))
    assert low.merged(high) == Settings(thresholds={"a": 1.0, "b": 3.0}, severity={"SA101": "error", "SA102": "info"},
                                        seed=2, method="auto", disable=frozenset({"SA101", "SA202"}), budget=5.0)
    assert low.merged(Settings()) == low and Settings().merged(low) == low


def test_flat_form_is_defaults_and_has_no_models(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "thresholds: {lipschitz: 3}\nseed: 4\ndefaults:\n  fail_on: warning\n",
                            "audit.yaml"))
    assert cfg.defaults == Settings(thresholds={"lipschitz": 3.0}, seed=4, fail_on="warning")
    assert cfg.models == () and resolve_models(cfg) == []


def test_methods_tuple() -> None:
    assert METHODS == ("auto", "product", "layerwise", "sdp", "eclipse-fast", "eclipse", "lipsdp-neuron", "exact")


def test_find_default_config(tmp_path: Path) -> None:
    assert find_default_config(tmp_path) is None
    (tmp_path / "stabaudit.yaml").mkdir()
    assert find_default_config(tmp_path) is None  # a directory is not a config
    other = tmp_path / "x"
    other.mkdir()
    (other / "stabaudit.yaml").write_text("")
    assert find_default_config(other) == other / "stabaudit.yaml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # syntax
        ("models:\n  - path: [a\n", "batch.yaml:3: invalid YAML: "),
        # wrong types: flat, defaults, model entry, waiver
        ("thresholds: [1]\n", "batch.yaml:1: thresholds: expected a mapping NAME: number"),
        ("defaults:\n  seed: true\n", "batch.yaml:2: defaults.seed: expected a non-negative integer (at most 4294967295)"),
        ("defaults:\n  seed: '3'\n", "batch.yaml:2: defaults.seed: expected a non-negative integer"),
        ("defaults:\n  seed: 4294967296\n", "batch.yaml:2: defaults.seed: expected a non-negative integer"),
        ("models:\n  - path: a.onnx\n  - path: b.onnx\n    thresholds:\n      x: 1\n      lipschitz: true\n",
         "batch.yaml:6: models[1].thresholds.lipschitz: expected a number"),
        ("models:\n  - path: a.onnx\n    thresholds: {lipschitz: .nan}\n",
         "batch.yaml:3: models[0].thresholds.lipschitz: expected a number"),
        ("models:\n  - path: a.onnx\n    input_shape: [1, -3]\n",
         "batch.yaml:3: models[0].input_shape: expected a list of positive integers"),
        ("models:\n  - path: a.onnx\n    method: fastest\n", "batch.yaml:3: models[0].method: expected one of auto, product,"),
        ("models:\n  - path: a.onnx\n    budget: 0\n", "batch.yaml:3: models[0].budget: expected a finite number of seconds > 0"),
        ("timeout: .inf\n", "batch.yaml:1: timeout: expected a finite number of seconds > 0"),
        ("eps: -0.5\n", "batch.yaml:1: eps: expected a finite number >= 0"),
        ("max_memory: 8X\n", "batch.yaml:1: max_memory: expected a size such as 4G"),
        ("max_memory: true\n", "batch.yaml:1: max_memory: expected a size such as 8G, 512M, 25% or a number of bytes"),
        ("inputs: samples.txt\n", "batch.yaml:1: inputs: expected a .npz or .npy file, not 'samples.txt'"),
        ("defaults:\n  inputs: missing.npz\n", "batch.yaml:2: defaults.inputs: no such file 'missing.npz'"),
        ("checks: {disable: [SA303, sa1]}\n", "batch.yaml:1: checks.disable[1]: expected a check id such as SA101"),
        ("severity: {SA101: fatal}\n", "batch.yaml:1: severity.SA101: expected one of error, warning, info"),
        ("models: {path: a.onnx}\n", "batch.yaml:1: models: expected a list of models"),
        ("models:\n  - a.onnx\n", "batch.yaml:2: models[0]: expected a mapping with a 'path'"),
        ("waivers:\n  - check: SA101\n    reason: [x]\n", "batch.yaml:3: waivers[0].reason: expected a non-empty reason"),
        ("waivers:\n  - {check: SA101, reason: r}\n  - {check: 101, reason: r}\n",
         "batch.yaml:3: waivers[1].check: expected a check id such as SA101"),
        # unknown keys, each level
        ("treshold: {a: 1}\n", "batch.yaml:1: treshold: unknown key (did you mean 'thresholds'?)"),
        ("defaults:\n  sed: 1\n", "batch.yaml:2: defaults.sed: unknown key (did you mean 'seed'?)"),
        ("models:\n  - pth: a.onnx\n", "batch.yaml:2: models[0].pth: unknown key (did you mean 'path'?)"),
        ("models:\n  - path: a.onnx\n    checks: {disabled: [SA101]}\n",
         "batch.yaml:3: models[0].checks.disabled: unknown key (did you mean 'disable'?)"),
        ("waivers:\n  - check: SA101\n    reason: r\n    expire: 2027-01-01\n",
         "batch.yaml:4: waivers[0].expire: unknown key (did you mean 'expires'?)"),
        # files and globs
        ("models:\n  - path: a.onnx\n  - path: gone.onnx\n", "batch.yaml:3: models[1].path: no such file 'gone.onnx'"),
        ("models:\n  - path: a.onnx\n  - path: x/*.onnx\n", "batch.yaml:3: models[1].path: no file matches 'x/*.onnx'"),
        # duplicates, conflicts, waivers
        ("models:\n  - path: a.onnx\n    seed: 1\n    seed: 2\n", "batch.yaml:4: models[0].seed: duplicate key"),
        ("seed: 1\nthresholds: {a: 1}\ndefaults:\n  seed: 2\n",
         "batch.yaml:1: seed: also set under defaults: (line 4); give each setting once"),
        ("waivers:\n  - check: SA101\n    reason: r\n    expires: 2027-02-30\n",
         "batch.yaml:4: waivers[0].expires: invalid value: day is out of range for month"),
        ("waivers:\n  - check: SA101\n    reason: r\n    expires: 'next year'\n",
         "batch.yaml:4: waivers[0].expires: expected a date YYYY-MM-DD"),
        ("waivers:\n  - check: SA101\n    reason: r\n    expires: '2027-13-01'\n",
         "batch.yaml:4: waivers[0].expires: expected a date YYYY-MM-DD (month must be in 1..12)"),
        ("waivers:\n  - check: SA101\n    expires: 2027-01-01\n", "batch.yaml:2: waivers[0].reason: missing (required)"),
        ("waivers:\n  - check: SA101\n    reason: '  '\n", "batch.yaml:3: waivers[0].reason: expected a non-empty reason"),
        ("models:\n  - seed: 1\n", "batch.yaml:2: models[0].path: missing (required)"),
        ("models:\n  - &m {path: a.onnx, checks: {disable: *m}}\n", "invalid value: an alias that contains itself"),
        # the first error in the file's order wins, whatever pydantic's order
        ("waivers:\n  - {check: SA101}\nseed: -1\n", "batch.yaml:2: waivers[0].reason: missing (required)"),
    ],
)
def test_errors_name_file_line_and_key_path(tmp_path: Path, text: str, message: str) -> None:
    touch(tmp_path, "a.onnx")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve_models(load_config(path))
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"{path}:")
    assert message in text_of_error, text_of_error
    assert "\n" not in text_of_error and "Input should" not in text_of_error
    assert info.value.exit_code == 2 and info.value.path == str(path)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    from stabaudit.config import load_config

    p = tmp_path / "audit.yaml"
    p.write_text("thresholds: {lipschitz: 1e5, exponent: -2E-3, layer_lipschitz: 1.5e+2}\nseed: 7\n")
    cfg = load_config(p)
    assert cfg.defaults.thresholds == {"lipschitz": 1e5, "exponent": -2e-3, "layer_lipschitz": 150.0}
    p.write_text("thresholds: {lipschitz: 1e5x}\n")
    import pytest

    from stabaudit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit.yaml:1: thresholds.lipschitz: expected a number"):
        load_config(p)
