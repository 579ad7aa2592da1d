"""Input domains: seeded reproducible draws, broadcasting, shape checks, config validation."""

from __future__ import annotations

import numpy as np
import pytest

from stabaudit.analyses.samples import (
    NormalDomain,
    UniformDomain,
    Values,
    conform_samples,
    draw_samples,
    values_of,
)
from stabaudit.config.loader import load_config
from stabaudit.errors import ConfigError, UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec


def v(x: object) -> Values:
    return values_of(x)


def test_draws_are_seeded_and_reproducible():
    box = UniformDomain(low=v(-1), high=v([0.0, 1.0, 2.0]))
    a = draw_samples(box, (1, 3), 50, seed=7)
    assert a.shape == (50, 1, 3)
    assert np.array_equal(a, draw_samples(box, (1, 3), 50, seed=7))
    assert not np.array_equal(a, draw_samples(box, (1, 3), 50, seed=8))
    assert np.all(a >= -1) and np.all(a <= np.array([0.0, 1.0, 2.0]))
    # the first value is numpy's PCG64 stream: low + (high - low) * u
    u = np.random.default_rng(7).random((50, 1, 3))
    assert np.array_equal(a, -1 + (np.array([0.0, 1.0, 2.0]) + 1) * u)
    normal = NormalDomain(mean=v(2.0), std=v(0.0))
    assert np.array_equal(draw_samples(normal, (1, 2), 3, seed=0), np.full((3, 1, 2), 2.0))


def test_per_channel_and_nested_values_broadcast_to_the_input_shape():
    # one value per channel (axis 1) of a [1, 2, 2, 2] input
    box = UniformDomain(low=v([0.0, 10.0]), high=v([1.0, 11.0]))
    x = draw_samples(box, (1, 2, 2, 2), 20, seed=1)
    assert np.all((x[:, :, 0] >= 0) & (x[:, :, 0] <= 1)) and np.all((x[:, :, 1] >= 10) & (x[:, :, 1] <= 11))
    nested = NormalDomain(mean=v([[[0.0]], [[5.0]]]), std=v(0.0))
    assert np.array_equal(draw_samples(nested, (1, 2, 2, 2), 1, seed=0)[0, 0, 1], np.full((2, 2), 5.0))
    with pytest.raises(UsageError, match=r"domain.low: 3 values.*2 channels"):
        draw_samples(UniformDomain(low=v([0, 0, 0]), high=v(1)), (1, 2, 2, 2), 1, seed=0)
    with pytest.raises(UsageError, match=r"domain.mean: values of shape \[2, 3\] do not broadcast"):
        draw_samples(NormalDomain(mean=v([[0, 0, 0], [0, 0, 0]]), std=v(1)), (1, 4), 1, seed=0)


def graph(shape: tuple[int, ...]) -> Graph:
    n = int(np.prod(shape))
    node = Node(name="fc", op=O.Linear(weight=np.eye(n)), inputs=("f",), output="y")
    flat = Node(name="flat", op=O.Reshape(shape=(1, n)), inputs=("x",), output="f")
    return Graph(inputs=(TensorSpec(name="x", shape=shape),), outputs=("y",), nodes=(flat, node))


def test_samples_must_match_the_model_input_shape():
    g = graph((1, 3, 2))
    for ok in (np.zeros((4, 1, 3, 2)), np.zeros((4, 3, 2)), np.zeros((4, 6))):
        assert conform_samples(ok, g).shape == (4, 1, 3, 2)
    with pytest.raises(UsageError, match=r"--inputs: samples of shape \[4, 2, 3\] do not match the model's input shape \[1, 3, 2\]"):
        conform_samples(np.zeros((4, 2, 3)), g)
    with pytest.raises(UsageError, match=r"expected \[N, 1, 3, 2\] or \[N, 3, 2\] or \[N, 6\]"):
        conform_samples(np.zeros((4, 5)), g)


def write(tmp_path, text: str):
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("seed: 1\ndomain: {low: 1, high: 0}\n", ":2: domain: expected low <= high for every entry"),
        ("domain:\n  mean: 0\n  std: [1, -1]\n", ":3: domain.std: expected std >= 0 for every entry"),
        ("domain: {low: 1}\n", ":1: domain: expected one of {low, high} (a box), {mean, std} (normal), {ball} or {margin}, got {low}"),
        ("domain: {low: 0, high: 1, mean: 0}\n", ":1: domain: expected one of {low, high} (a box)"),
        ("domain: {low: [0, x], high: 1}\n", ":1: domain.low: expected a number or a rectangular list of numbers"),
        ("domain: {lo: 0, high: 1}\n", ":1: domain.lo: unknown key (did you mean 'low'?)"),
        ("domain: 3\n", ":1: domain: expected a mapping {low, high} (a box), {mean, std} (normal), {ball: EPS} or {margin: M}"),
        ("domain: {mean: .inf, std: 1}\n", ":1: domain.mean: expected finite numbers"),
        ("domain: {low: [0, 0], high: [1, 1, 1]}\n", ":1: domain: low (2,) and high (3,) have incompatible shapes"),
        ("eps: 0.1\nsamples: 0\n", ":2: samples: expected a positive integer (at most 100000)"),
        ("samples: 2.5\n", ":1: samples: expected a positive integer"),
        (
            "models:\n  - path: m.onnx\n    domain:\n      low: 2\n      high: 1\n",
            ":4: models[0].domain: expected low <= high for every entry",
        ),
    ],
)
def test_bad_domain_configs_name_line_and_key(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}{where}" or str(info.value).startswith(f"{path}{where}")


def test_domain_and_samples_load_and_merge(tmp_path):
    path = write(
        tmp_path,
        "defaults:\n  domain: {low: 0, high: [1, 2]}\n  samples: 8\n"
        "models:\n  - path: m.onnx\n    domain: {mean: 0, std: 1}\n",
    )
    config = load_config(path)
    assert config.defaults.domain == UniformDomain(low=Values(values=(0.0,)), high=Values(values=(1.0, 2.0), shape=(2,)))
    assert config.defaults.samples == 8
    merged = config.defaults.merged(config.models[0].settings)
    assert merged.domain == NormalDomain(mean=Values(values=(0.0,)), std=Values(values=(1.0,)))
    assert merged.samples == 8
