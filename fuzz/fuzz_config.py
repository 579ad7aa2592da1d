"""atheris target: the audit YAML loader on arbitrary bytes; anything but a config or a one-line
ConfigError is a finding."""

from __future__ import annotations

import sys

import _common  # noqa: F401  (puts the repository on sys.path)
import atheris

with atheris.instrument_imports(include=["stabaudit", "yaml"]):
    import yaml  # noqa: F401  (instrumented now; the config loader imports it lazily)

    from stabaudit.config import load_config, resolve_models
    from stabaudit.errors import ConfigError

from tests.fuzz.harness import check_error  # noqa: E402

PATH = _common.scratch_file(".yaml")
SEEDS = [
    b"thresholds:\n  lipschitz: 10\n  SA103: 0.5\nseed: 3\ninput_shape: [1, 3, 8, 8]\nfail_on: warning\nseverity: {SA102: info}\n",
    b"",
    b"thresholds: {a: &x 1, b: *x}\n",
    b"severity:\n  SA101: error\n  SA102: warning\n",
    b"- 1\n- 2\n",
    b"seed: !!int 3\n",
    b"defaults:\n  thresholds: {lipschitz: 100}\nmodels:\n  - path: a.onnx\n    checks: {disable: [SA303]}\n"
    b"waivers:\n  - {check: SA101, model: '*.onnx', reason: r, expires: 2027-03-01}\n",
    b"models:\n  - &m {path: '*.pt', max_memory: 8G, method: sdp, budget: 1.5}\n  - *m\n",
    b"domain: {low: [0, 0.5], high: 1}\nsamples: 16\neps: 0.02\n",
    b"training:\n  learning_rate: 0.01\n  optimizer: adam\n  betas: [0.9, 0.999]\n  loss: cross_entropy\n"
    b"  data: train.npz\n",
    b"trajectory:\n  - {path: a.onnx, step: 0}\n  - {path: b.onnx, step: 100}\n",
]


def test_one_input(data: bytes) -> None:
    PATH.write_bytes(data)
    try:
        resolve_models(load_config(PATH))
    except ConfigError as exc:
        check_error(exc)


if __name__ == "__main__":
    _common.run("config", [(f"seed-{i}", s) for i, s in enumerate(SEEDS)], test_one_input)
    sys.exit(0)
