"""Tests of the TorchScript static gate: hostile archives refused before any of their code runs."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from stabaudit.cli import app
from stabaudit.errors import UntrustedModelError
from stabaudit.loaders import ts_gate
from stabaudit.loaders.torchscript import load_torchscript, supported_operators

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
runner = CliRunner()


# ---- hostile modules (scripted in tmp_path; nothing of them runs while scripting or saving) ------
class FromFile(nn.Module):
    """forward maps a file with torch.from_file: shared=True creates it (the sentinel)."""

    def __init__(self, path: str, shared: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.path = path
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_file(self.path, shared=self.shared, size=3)
        return self.fc(x) + y.sum() * 0.0


class SetStateWrites(nn.Module):
    """__setstate__ (run inside torch.jit.load) writes a file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 4, generator=torch.Generator().manual_seed(0)))
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.path = state[1]
        self.training = state[2]
        torch.save(self.weight, self.path)


class SetStatePrints(SetStateWrites):
    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.path = state[1]
        self.training = state[2]
        print("pwned by __setstate__")


class SetStateAllocates(SetStateWrites):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.big = torch.zeros(1)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.path = state[1]
        self.training = state[2]
        self.big = torch.zeros([1 << 22, 1 << 22])  # 64 TiB of float32


class PlainState(SetStateWrites):
    """The benign form: attributes from the state, nothing else."""

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.path = state[1]
        self.training = state[2]


def _script(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path), _extra_files={"stabaudit.json": '{"input_shape": [1, 4]}'})
    return path


def _check(model: Path, *extra: str):
    return runner.invoke(app, ["check", str(model), "--format", "json", "--no-cache", "-q", "--budget", "0.3", *extra])


def _refusal_report(stdout: str) -> str:
    """stdout is exactly the refusal report (JSON, SA900, no bound): nothing else was printed."""
    report = json.loads(stdout)
    assert report["verdict"] == "fail" and report["exit_code"] == 2 and report["lipschitz"]["upper"] is None
    [finding] = report["checks"]
    assert finding["id"] == "SA900" and finding["message"].startswith("refused before loading")
    return str(finding["message"])


def _refused(result, *fragments: str) -> None:
    """Exit 2, one `error:` line naming the call and the code file, the refusal report on stdout."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused before loading" in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert _refusal_report(result.stdout) in lines[0]


# ---- hostile archives, through the CLI -------------------------------------------------------------
def test_from_file_in_forward_is_refused_before_it_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    model = _script(FromFile(str(sentinel), True), tmp_path / "from_file.pt")
    _refused(_check(model), "from_file/code/__torch__/", ".py:", "calls torch.from_file", "--trust-torchscript")
    assert not sentinel.exists()
    # the archive is real: trusted, its forward creates the file (while the loader folds constants)
    load_torchscript(model, trust_code=True)
    assert sentinel.exists()


def test_from_file_reading_a_secret_as_weights_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_bytes(b"root:x:0:0:r")  # 12 bytes = 3 float32, what the archive reads
    model = _script(FromFile(str(secret), False), tmp_path / "read.pt")
    _refused(_check(model), "calls torch.from_file")


def test_setstate_that_writes_is_refused_before_torch_jit_load(tmp_path: Path) -> None:
    sentinel = tmp_path / "written"
    model = _script(SetStateWrites(str(sentinel)), tmp_path / "setstate.pt")
    assert not sentinel.exists()  # scripting and saving ran none of it
    _refused(_check(model), "SetStateWrites.__setstate__", "does more than assign attributes", "calls torch.save")
    assert not sentinel.exists()
    with pytest.raises(UntrustedModelError, match=r"__setstate__, which does more than assign attributes .*torch\.save"):
        load_torchscript(model)
    assert not sentinel.exists()
    load_torchscript(model, trust_code=True)  # trusted: torch.jit.load runs __setstate__
    assert sentinel.exists()


def test_setstate_that_allocates_is_refused(tmp_path: Path) -> None:
    model = _script(SetStateAllocates(str(tmp_path / "unused")), tmp_path / "alloc.pt")
    _refused(_check(model), "calls torch.zeros", "__setstate__")


def test_setstate_that_prints_is_refused_with_nothing_on_stdout(tmp_path: Path) -> None:
    """A subprocess: TorchScript's print writes to the process's standard output."""
    model = _script(SetStatePrints(str(tmp_path / "unused")), tmp_path / "prints.pt")
    env = {**os.environ, "HOME": str(tmp_path), "STABAUDIT_NO_CACHE": "1"}
    proc = subprocess.run([sys.executable, "-m", "stabaudit", "check", str(model), "--format", "json", "-q"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pwned" not in proc.stdout + proc.stderr
    _refusal_report(proc.stdout)  # valid JSON: nothing of the archive's print in it
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "__setstate__" in lines[0] and "calls print" in lines[0] and "prints.pt" in lines[0], proc.stderr


def test_the_print_archive_does_print_when_trusted(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The archive of the test above is a real threat: loaded without the gate, it prints."""
    model = _script(SetStatePrints(str(tmp_path / "unused")), tmp_path / "prints.pt")
    load_torchscript(model, trust_code=True)
    assert "pwned by __setstate__" in capfd.readouterr().out


# ---- benign archives and --trust-torchscript ------------------------------------------------------
class Legit(nn.Module):
    """The operators real archives use: conv, BatchNorm, ReLU, Softplus, GELU, dropout, pooling,
    flatten, view, permute, cat, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.1)
        self.pool = nn.MaxPool2d(2)
        self.soft = nn.Softplus()
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x)))
        h = F.gelu(h + self.conv2(h))
        h = self.drop(self.soft(self.pool(h)))
        h = h.permute(0, 1, 3, 2).contiguous().view(h.size(0), 4, -1)
        h = torch.cat([h, h], 1)
        return self.fc(torch.flatten(h, 1))


@pytest.mark.parametrize("mode", ["script", "trace"])
def test_legitimate_archives_pass_the_gate(mode: str, tmp_path: Path) -> None:
    module = Legit().eval()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    saved = torch.jit.script(module) if mode == "script" else torch.jit.trace(module, x)
    path = tmp_path / f"{mode}.pt"
    saved.save(str(path))
    ts_gate.check_archive_code(path, str(path))
    loaded = load_torchscript(path, input_shape=(1, 2, 4, 4))
    assert loaded.source_ops


@pytest.mark.parametrize("name", ["mlp.pt", "cnn.pt", "resnet.pt"])
def test_sample_archives_pass_the_gate(name: str) -> None:
    ts_gate.check_archive_code(SAMPLES / name, name)


def test_plain_setstate_passes_and_loads(tmp_path: Path) -> None:
    model = _script(PlainState(str(tmp_path / "unused")), tmp_path / "plain.pt")
    ts_gate.check_archive_code(model, str(model))
    assert load_torchscript(model).graph.nodes


def test_trust_torchscript_loads_a_benign_archive_as_before(tmp_path: Path) -> None:
    gated, trusted = _check(SAMPLES / "mlp.pt"), _check(SAMPLES / "mlp.pt", "--trust-torchscript")
    assert gated.exit_code == trusted.exit_code == 0, (gated.stderr, trusted.stderr)
    a, b = json.loads(gated.stdout), json.loads(trusted.stdout)
    assert a["lipschitz"]["upper"] == b["lipschitz"]["upper"] and a["lipschitz"]["certified"]
    skipped = [n for n in b["notes"] if "static gate" in n]
    assert len(skipped) == 1 and "--trust-torchscript" in skipped[0]
    assert not any("static gate" in n for n in a["notes"])


def test_trust_from_the_config_and_the_api(tmp_path: Path) -> None:
    import stabaudit

    sentinel = tmp_path / "sentinel"
    model = _script(FromFile(str(sentinel), True), tmp_path / "from_file.pt")
    with pytest.raises(UntrustedModelError):
        stabaudit.audit(model, budget=0.3)
    config = tmp_path / "audit.yaml"
    config.write_text("trust_torchscript: false\n")
    _refused(_check(model, "--config", str(config)), "torch.from_file")
    assert not sentinel.exists()
    config.write_text("trust_torchscript: true\n")
    result = _check(model, "--config", str(config))
    assert sentinel.exists()  # trusted: its forward ran
    assert "refused before loading" not in result.stderr


# ---- hand-edited archives: what torch.jit.script would not write, a hostile file may hold ---------
def _edited(tmp_path: Path, replace: dict[str, bytes | tuple[bytes, bytes]]) -> Path:
    """sample mlp.pt with entries replaced (name suffix -> new bytes) or edited ((old, new))."""
    out = io.BytesIO()
    with zipfile.ZipFile(SAMPLES / "mlp.pt") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            for suffix, change in replace.items():
                if info.filename.endswith(suffix):
                    data = data.replace(*change) if isinstance(change, tuple) else change
            dst.writestr(info.filename, data)
    path = tmp_path / "edited.pt"
    path.write_bytes(out.getvalue())
    return path


RELU = b"torch.relu((fc1).forward(input, ))"


@pytest.mark.parametrize(("edit", "message"), [
    ((RELU, b"ops.myns.evil((fc1).forward(input, ))"), "operator namespace 'myns'"),
    ((RELU, b"torch.ops.myns.evil((fc1).forward(input, ))"), "operator namespace 'myns'"),
    ((RELU, b"ops.prim.Print((fc1).forward(input, ))"), "torch.ops.prim.Print"),
    ((RELU, b"torch.classes.myns.Evil((fc1).forward(input, ))"), "custom class torch.classes.myns.Evil"),
    ((RELU, b"__torch__.torch.classes.myns.Evil((fc1).forward(input, ))"), "custom class"),
    ((RELU, b"(input).save(\"/tmp/x\")"), "calls the method save()"),
    ((RELU, b"open(\"/etc/passwd\")"), "calls open()"),
    ((RELU, b"os.system(\"true\")"), "uses the global name 'os'"),
    ((RELU, b"builtins.open(\"/etc/passwd\")"), "uses the global name 'builtins'"),
    ((RELU, b"getattr(torch, \"from_file\")(\"f\", True, 64)"), "calls getattr() on torch"),
    ((RELU, b"getattr(ops.myns, \"evil\")(input)"), "operator namespace 'myns'"),
    ((RELU, b"torch.load(\"/tmp/x\")"), "calls torch.load"),
    ((RELU, b"__torch__.nowhere.f(input)"), "not defined in the archive: __torch__.nowhere.f"),
    ((b"class MLP(Module):", b"import os\nclass MLP(Module):"), "Import statement"),
    ((RELU, b"torch.relu((fc1).forward(input, ) +"), "code the gate cannot read"),
])
def test_hand_edited_code_is_refused(tmp_path: Path, edit: tuple[bytes, bytes], message: str) -> None:
    path = _edited(tmp_path, {"code/__torch__.py": edit})
    with pytest.raises(UntrustedModelError, match=r"refused before loading: archive/code/__torch__\.py:\d+ "):
        ts_gate.check_archive_code(path, str(path))
    found = [f.text() for f in ts_gate._findings(path, str(path))]  # every finding, the first one shown
    assert any(message in text for text in found), found


def test_foreign_pickle_globals_are_refused(tmp_path: Path) -> None:
    # GLOBAL (protocol 2, as torch.jit.save writes) in data.pkl
    path = _edited(tmp_path, {"data.pkl": (b"ccollections\nOrderedDict\n", b"cos\nsystem\n")})
    with pytest.raises(UntrustedModelError, match=r"archive/data\.pkl references the global os\.system"):
        ts_gate.check_archive_code(path, str(path))
    # STACK_GLOBAL (protocol 4) in constants.pkl: the names come from memoized strings
    path = _edited(tmp_path, {"constants.pkl": pickle.dumps(os.system, protocol=4)})
    with pytest.raises(UntrustedModelError, match=r"constants\.pkl references the global (posix|nt)\.system"):
        ts_gate.check_archive_code(path, str(path))
    # a class the archive's code does not define
    path = _edited(tmp_path, {"data.pkl": (b"c__torch__\nMLP\n", b"c__torch__.torch.classes.q\nPacked\n")})
    with pytest.raises(UntrustedModelError, match=r"custom class __torch__\.torch\.classes\.q\.Packed"):
        ts_gate.check_archive_code(path, str(path))


def test_pickle_scan_reads_stack_globals() -> None:
    """The allowed globals pass in either opcode; the scan fails closed on an unreadable pickle."""
    for protocol in (2, 4):
        data = pickle.dumps(collections.OrderedDict(a=1), protocol=protocol)
        assert list(ts_gate._pickle_findings("x.pkl", data, frozenset())) == []
    found = list(ts_gate._pickle_findings("x.pkl", b"\x80\x02garbage", frozenset()))
    assert len(found) == 1 and "cannot read" in found[0].what


# ---- the allowlist itself -------------------------------------------------------------------------
def test_allowlist_covers_the_translators_and_refuses_file_and_process_access() -> None:
    allowed = ts_gate.allowed_operators()
    assert {name.split("::", 1)[1] for name in supported_operators()} <= allowed
    assert not {"from_file", "save", "load", "Print", "_load_for_mobile", "system"} & allowed


def test_no_allowed_operator_takes_a_file_name() -> None:
    """Every allowed name that is an ATen operator: no overload takes a file, path or storage."""
    allowed = ts_gate.allowed_operators()
    for schema in torch._C._jit_get_all_schemas():
        namespace, name = schema.name.split("::", 1)
        if namespace == "aten" and name in allowed:
            for argument in schema.arguments:
                assert not (argument.name in ("filename", "path", "f", "file") and "str" in str(argument.type)), schema
                assert "Storage" not in str(argument.type), schema


@pytest.mark.parametrize("make", [
    lambda: nn.Upsample(scale_factor=2.0),  # F.interpolate: every mode's branch is in the code tables
    lambda: nn.MultiheadAttention(4, 2),
    lambda: nn.LSTM(4, 4),
    lambda: nn.GRU(4, 4),
    lambda: nn.Bilinear(3, 3, 3),
    lambda: nn.EmbeddingBag(10, 4),
    lambda: nn.Unfold(2),
    lambda: nn.CosineSimilarity(),
    lambda: nn.RMSNorm(4),
    lambda: nn.ReflectionPad2d(1),
], ids=["upsample", "attention", "lstm", "gru", "bilinear", "embedding_bag", "unfold", "cosine", "rms_norm", "pad"])
def test_torch_nn_library_code_passes_the_gate(make, tmp_path: Path) -> None:
    """The code torch.nn's modules compile to, untranslated operators included: those reach the
    loader and are listed as unsupported (SA901), not refused as untrusted."""
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(make().eval()), str(path))
    ts_gate.check_archive_code(path, str(path))


FORBIDDEN = [
    'torch.from_file("f", True, 64)', 'print("x")', 'torch.save(CONSTANTS.c0, "f")', 'torch.load("f")',
    'ops.evil.op(1)', 'torch.ops.evil.op(1)', 'ops.prim.Print(1)', 'torch.classes.a.B()',
    '__torch__.torch.classes.a.B()', 'open("f")', '(self).save("f")', 'os.system("true")', 'getattr(self, "x")()',
]


@given(seed=st.sampled_from(["mlp.pt", "cnn.pt", "resnet.pt"]), line=st.integers(0, 10**6),
       call=st.sampled_from(FORBIDDEN))
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_forbidden_call_on_any_line_of_any_function_is_refused(tmp_path: Path, seed: str, line: int,
                                                                 call: str) -> None:
    """A statement calling outside the allowlist, inserted before any statement of any function of
    a sample archive's code tables: always refused, and the message names that call."""
    with zipfile.ZipFile(SAMPLES / seed) as archive:
        items = [(info.filename, archive.read(info)) for info in archive.infolist()]
    sites = [(i, k) for i, (name, data) in enumerate(items) if name.endswith(".py")
             for k, text in enumerate(data.decode().splitlines())
             if text.startswith("    ") and not text.lstrip().startswith(("def ", ")", "else:")) and
             not text.rstrip().endswith(",")]
    i, k = sites[line % len(sites)]
    lines = items[i][1].decode().splitlines()
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    lines.insert(k, f"{indent}_gate_probe = {call}")
    items[i] = (items[i][0], "\n".join(lines).encode())
    path = tmp_path / f"probe-{line}.pt"
    with zipfile.ZipFile(path, "w") as out:
        for name, data in items:
            out.writestr(name, data)
    with pytest.raises(UntrustedModelError, match="refused before loading") as info:
        ts_gate.check_archive_code(path, str(path))
    assert f"{items[i][0]}:{k + 1} " in str(info.value), str(info.value)


def test_the_archive_cannot_be_swapped_between_the_gate_and_torch_jit_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate and torch.jit.load read the same open file: a hostile archive renamed over the
    path right after the gate passed is never loaded."""
    sentinel = tmp_path / "sentinel"
    hostile = _script(SetStateWrites(str(sentinel)), tmp_path / "hostile.pt")
    model = tmp_path / "model.pt"
    model.write_bytes((SAMPLES / "mlp.pt").read_bytes())
    gate = ts_gate.check_archive_code

    def gate_then_swap(file: Path, where: str) -> None:
        gate(file, where)
        os.replace(hostile, model)  # the race an attacker with write access to the folder would run

    monkeypatch.setattr(ts_gate, "check_archive_code", gate_then_swap)
    loaded = load_torchscript(model)
    assert not sentinel.exists()
    assert loaded.graph.input_names and loaded.parameters == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10  # mlp.pt
