"""A TorchScript forward's signature: the input shape inferred (trace record, first layer) or
refused with what is known, and non-tensor arguments bound from --arg / the config."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stabaudit.errors import ModelLoadError
from stabaudit.ir import ops as O
from stabaudit.ir.executor import Executor
from stabaudit.loaders.torchscript import load_torchscript
from stabaudit.loaders.ts_signature import EXTRA_FILE, traced_shapes


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.nn.functional.dropout(x, 0.1, False) * 2.0)))


class Conv(nn.Module):
    def __init__(self, dims: int = 2, groups: int = 1) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.features = nn.Sequential(conv(6, 4, 3, groups=groups), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).sum(-1)


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _script(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


# ---- the input shape -----------------------------------------------------------------------------
def test_a_linear_first_layer_fixes_the_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaded = load_torchscript(_script(MLP(), tmp_path / "m.pt"))
    assert loaded.graph.inputs[0].shape == (1, 12)
    assert ("input shape [1, 12] inferred from the first layer on the input, 'fc1' (aten::linear, in_features 12); "
            "the batch size 1 is a choice (--input-shape sets another)") in loaded.notes
    assert load_torchscript(tmp_path / "m.pt", input_shape=(4, 12)).graph.inputs[0].shape == (4, 12)  # given wins


@pytest.mark.parametrize(("dims", "groups", "shown"), [
    (1, 1, "(1, 6, L): give --input-shape 1,6,L"),
    (2, 2, "(1, 6, H, W): give --input-shape 1,6,H,W"),  # grouped: in_channels = 3 per group x 2
    (3, 1, "(1, 6, D, H, W): give --input-shape 1,6,D,H,W"),
])
def test_a_convolution_fixes_the_channels_only(dims: int, groups: int, shown: str, tmp_path: Path) -> None:
    path = _script(Conv(dims, groups), tmp_path / "c.pt")
    with pytest.raises(ModelLoadError) as info:
        load_torchscript(path)
    assert str(info.value) == (f"the input shape is unknown: the first layer on the input, 'features.0' "
                               f"(aten::conv{dims}d, in_channels 6), makes it {shown}")


def test_trace_without_a_record_reads_the_convolution(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    traced = torch.jit.trace(Conv().eval(), torch.randn(1, 6, 5, 5), _store_inputs=False)
    torch.jit.save(traced, str(path))
    with pytest.raises(ModelLoadError, match=r"\(aten::_convolution, in_channels 6\), makes it \(1, 6, H, W\)"):
        load_torchscript(path)


def test_the_traced_example_sizes_are_used(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.jit.save(torch.jit.trace(Conv().eval(), torch.randn(2, 6, 5, 7)), str(path))
    loaded = load_torchscript(path)
    assert loaded.graph.inputs[0].shape == (2, 6, 5, 7)
    assert "input shape [2, 6, 5, 7] from the example input torch.jit.trace recorded in the archive" in loaded.notes
    # the archive's own stabaudit.json comes first
    torch.jit.save(torch.jit.trace(Conv().eval(), torch.randn(2, 6, 5, 7)), str(path),
                   _extra_files={EXTRA_FILE: json.dumps({"input_shape": [1, 6, 4, 4]})})
    assert load_torchscript(path).graph.inputs[0].shape == (1, 6, 4, 4)


def test_no_inference_through_a_reshape(tmp_path: Path) -> None:
    # flatten(1) then Linear(12): (1, 12), (1, 3, 4), (1, 2, 2, 3) all fit; nothing is guessed
    with pytest.raises(ModelLoadError, match=r"^the input shape is unknown: pass --input-shape"):
        load_torchscript(_script(Flat(), tmp_path / "f.pt"))


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("exit 3",))


def test_the_trace_record_is_read_as_data_only() -> None:
    assert traced_shapes(pickle.dumps({"forward": [_Evil()]}, protocol=2)) is None  # refused, not called
    assert traced_shapes(b"not a pickle") is None
    assert traced_shapes(None) is None


# ---- non-tensor arguments ------------------------------------------------------------------------
class Rate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        return self.fc(x) * (sr / 16000.0)


class Options(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, dims: list[int], scale: float = 2.0, mask: torch.Tensor | None = None,
                negate: bool = False, mode: str = "plain") -> torch.Tensor:
        y = self.fc(x) * scale
        if mask is not None:
            y = y * mask
        if negate:
            y = -y
        if mode == "shifted":
            y = y + 1.0
        return y.sum(dims)


def test_an_argument_without_a_value_is_named_with_its_type(tmp_path: Path) -> None:
    path = _script(Rate(), tmp_path / "r.pt")
    with pytest.raises(ModelLoadError) as info:
        load_torchscript(path)
    assert str(info.value) == ("forward argument 'sr' (int) has no value: give it with --arg sr=VALUE or the "
                               "config's arguments: {sr: VALUE}")


@pytest.mark.parametrize("given", ["8000", 8000])
def test_an_argument_is_bound_at_its_value(given: str | int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Rate().eval()
    loaded = load_torchscript(_script(module, tmp_path / "r.pt"), arguments={"sr": given})
    assert [n.op.type for n in loaded.graph.nodes] == [O.OpType.LINEAR, O.OpType.AFFINE]
    scale = loaded.graph.nodes[1].op
    assert isinstance(scale, O.Affine) and float(np.asarray(scale.scale)) == 0.5
    assert "forward's non-tensor arguments, translated at these values: sr=8000 (int, given)" in loaded.notes
    x = torch.randn(1, 5)
    with torch.no_grad():
        want = module(x, 8000).numpy()
    np.testing.assert_allclose(Executor(loaded.graph)(x)[0].numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.reference({"x": x.numpy()})[0], want)


def test_arguments_of_every_kind_and_their_defaults(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Options().eval()
    path = _script(module, tmp_path / "o.pt")
    x = torch.randn(2, 4)
    loaded = load_torchscript(path, input_shape=(2, 4), arguments={"dims": "0,1", "scale": "0.5", "negate": "true",
                                                                   "mode": "shifted", "mask": "none"})
    with torch.no_grad():
        want = module(x, [0, 1], 0.5, None, True, "shifted").numpy()
    np.testing.assert_allclose(Executor(loaded.graph)(x)[0].numpy(), want, rtol=0, atol=1e-5)
    defaults = load_torchscript(path, input_shape=(2, 4), arguments={"dims": [1]})
    assert ("forward's non-tensor arguments, translated at these values: dims=[1] (List[int], given), scale=2.0 "
            "(float, its default), mask=None (Optional[Tensor], its default), negate=False (bool, its default), "
            "mode='plain' (str, its default)") in defaults.notes
    with torch.no_grad():
        want = module(x, [1]).numpy()
    np.testing.assert_allclose(Executor(defaults.graph)(x)[0].numpy(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"dims": [1], "negate": "maybe"}, "forward argument 'negate' (bool): 'maybe' is not a bool (true or false)"),
    ({"dims": "1,x"}, "forward argument 'dims' (List[int]): '1,x' is not a List[int] ('x' is not an int)"),
    ({"dims": [1], "scale": "fast"}, "forward argument 'scale' (float): 'fast' is not a float"),
    ({"dims": [1], "mode": 3}, "forward argument 'mode' (str): 3 is not a string"),
    ({"dims": [1], "mask": "1"}, "forward argument 'mask' is a Tensor: stabaudit gives values to int, float, bool, "
                                 "str, their lists and Optionals only"),
    ({"dims": [1], "rate": 3}, "forward has no argument 'rate' (its arguments: x, dims, scale, mask, negate, mode)"),
    ({"dims": [1], "x": 3}, "forward argument 'x' is a tensor input: give its shape with --input-shape, not a value"),
])
def test_bad_argument_values_are_refused(arguments: dict[str, object], message: str, tmp_path: Path) -> None:
    path = _script(Options(), tmp_path / "o.pt")
    with pytest.raises(ModelLoadError) as info:
        load_torchscript(path, input_shape=(2, 4), arguments=arguments)  # type: ignore[arg-type]
    assert str(info.value) == message


class Table(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, cfg: dict[str, int]) -> torch.Tensor:
        return self.fc(x) * float(cfg["a"])


def test_an_argument_of_a_type_without_values_is_named(tmp_path: Path) -> None:
    path = _script(Table(), tmp_path / "t.pt")
    with pytest.raises(ModelLoadError) as info:
        load_torchscript(path)
    assert str(info.value) == ("forward argument 'cfg' is a Dict[str, int] without a default: stabaudit gives values "
                               "to int, float, bool, str, their lists and Optionals only")


def test_complete_tensor_types_of_the_graph_give_the_shape() -> None:
    # a traced module in memory keeps its example's sizes in its graph's input types (an archive
    # read back by torch.jit.load does not: its forward is compiled from code)
    from stabaudit.loaders.ts_signature import forward_signature

    traced = torch.jit.trace(Conv().eval(), torch.randn(3, 6, 4, 5))
    signature = forward_signature(traced, traced.graph, input_shape=None, extra="", traced=None, arguments={},
                                  where="m.pt")
    assert signature.shapes == ((3, 6, 4, 5),)
    assert signature.notes == ("input shape [3, 6, 4, 5] from the complete tensor types of forward's graph",)
