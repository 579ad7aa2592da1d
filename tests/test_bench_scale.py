"""bench/scale.py: each synthetic model generator exports an ONNX model that onnxruntime runs to the
torch output (at reduced sizes), and the scale table's helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


scale = _load()

GENERATORS = {
    "resnet18": lambda: scale.resnet(18, base=8, size=32, classes=10),
    "resnet50": lambda: scale.resnet(50, base=4, size=32, classes=10),
    "mobilenetv2": lambda: scale.mobilenetv2(width=0.25, size=32, classes=10),
    "vit": lambda: scale.vit(size=32, patch=8, dim=32, depth=2, heads=4, classes=10),
    "mlp": lambda: scale.mlp(16, 3),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_exports_what_torch_computes(name: str, tmp_path: Path) -> None:
    model, shape = GENERATORS[name]()
    path = tmp_path / f"{name}.onnx"
    scale.export(model, shape, path)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got)) and float(np.abs(expected).max()) > 1e-3  # not a dead network
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_full_size_parameter_counts() -> None:
    # the ImageNet layouts: torchvision's resnet18 / resnet50 / mobilenet_v2 have these counts
    with torch.device("meta"):
        assert scale.param_count(scale.resnet(18)[0]) == 11_689_512
        assert scale.param_count(scale.resnet(50)[0]) == 25_557_032
        assert scale.param_count(scale.mobilenetv2()[0]) == 3_504_872


def test_growth_exponent_and_selection() -> None:
    assert scale.exponent([(1, 2.0), (2, 8.0), (4, 32.0)]) == pytest.approx(2.0)
    assert scale.exponent([(4, 1.0)]) is None
    names = [c.name for c in scale.select(scale.cases(quick=False), "resnet50,mlp_width")]
    assert names == ["resnet50", "mlp_w256_d4", "mlp_w512_d4", "mlp_w1024_d4", "mlp_w2048_d4", "mlp_w4096_d4"]
    depth = [c.name for c in scale.select(scale.cases(quick=False), "mlp_depth")]
    assert depth == ["mlp_w256_d4", "mlp_w256_d2", "mlp_w256_d8", "mlp_w256_d16"]
    quick = scale.cases(quick=True)
    assert [c.name for c in quick][-1] == "resnet18"
    series = {name for c in quick for name in c.series}
    assert series == {"MLP width (depth 4)", "MLP depth (width 64)"}
    with pytest.raises(SystemExit):
        scale.select(quick, "nonesuch")


def test_child_past_its_limit_is_killed_and_measured() -> None:
    code, wall, cpu, rss, _, killed = scale.run_child([sys.executable, "-c", "import time; time.sleep(30)"], 0.3)
    assert killed and code < 0 and wall < 10 and cpu >= 0 and rss > 0


def test_row_of_a_timed_out_audit() -> None:
    case = scale.cases(quick=True)[0]
    report = {
        "lipschitz": {"lower": None, "upper": 67.9, "methods": []},
        "timings": {"load": 2.0, "layer_bounds": 10.0, "total": 12.0},
        "stopped": {"reason": "timeout", "stage": "global_methods", "seconds": 600.0},
        "planned": {"lower_bound": 3.5, "total": 3.5},
    }
    row = scale.Row(case, 10, 2, 603.0, 590.0, 100.0, report, "")
    assert scale.planned(row) == "3.5" and scale.planned(scale.Row(case, 10, 2, 1.0, 1.0, 1.0, None, "")) == "-"
    assert "| 3.5 |" in scale.table([row])[2]
    assert scale.bracket(row) == "timed out in global_methods ([none, 67.9])"
    assert scale.where(row).startswith("global_methods (until the timeout) 588 s (98%), layer_bounds 10 s (2%)")
    assert scale.growth([row]) == [f"- {name}: fewer than two finished audits, no exponent." for name in case.series]


def test_the_benchmark_page_keeps_the_sections_other_scripts_measured(tmp_path: Path) -> None:
    """bench/run.py rewrites its own sections and keeps the others (wild models, domains) verbatim."""
    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT.parent / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    page = tmp_path / "benchmarks.md"
    assert run._kept_sections(page, []) == []
    page.write_text("# Benchmarks\n\n## Start-up\n\nold\n\n## Real models\n\n| a |\n\nnote\n\n## Scale\n\nold\n")
    kept = run._kept_sections(page, ["# Benchmarks", "## Start-up", "new", "## Scale", "new"])
    assert kept == ["## Real models", "", "| a |", "", "note", ""]
