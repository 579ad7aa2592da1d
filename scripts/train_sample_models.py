"""Train the bundled sample models on scikit-learn's 8x8 digits and save them as ONNX and TorchScript.

Deterministic: fixed seeds, one thread, deterministic algorithms, PYTHONHASHSEED=0 (the script
re-executes itself with it), and archives written without anything that varies between runs (no
timestamps, no random serialization id, no debug source paths). Running it twice gives
byte-identical files.

    python scripts/train_sample_models.py --out sample_models
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
N_TRAIN = 1400  # of the 1797 digits; the rest is the test set
N_SAMPLES = 16  # test inputs bundled in digits_samples.npz
OPSET = 17
EXTRA_FILE = "stabaudit.json"  # read by stabaudit's TorchScript loader for the input shape


# ---- models ------------------------------------------------------------------------------------
class MLP(nn.Module):
    """64-32-32-10 ReLU MLP on flattened digits [1, 64]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(input))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class CNN(nn.Module):
    """Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-AvgPool-Flatten-Linear on [1, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(input), 1))


class ResidualBlock(nn.Module):
    """relu(x + bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(h)))


class ResNet(nn.Module):
    """Stem conv 1->8, two residual blocks, global average pool, linear 8->10 on [1, 1, 8, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.block1 = ResidualBlock(8)
        self.block2 = ResidualBlock(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(input))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# name -> (constructor, input shape, epochs, TorchScript by "trace" or "script")
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, str]] = {
    "mlp": (MLP, (1, 64), 40, "trace"),
    "cnn": (CNN, (1, 1, 8, 8), 25, "script"),
    "resnet": (ResNet, (1, 1, 8, 8), 25, "trace"),
}


# ---- data and training -------------------------------------------------------------------------
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of sklearn's bundled digits (no download); pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return x[train], y[train], x[test], y[test]


def reshape_for(shape: tuple[int, ...], x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).reshape((-1, *shape[1:]))


def train(name: str, x: np.ndarray, y: np.ndarray) -> nn.Module:
    make, shape, epochs, _ = MODELS[name]
    torch.manual_seed(SEED)
    model = make()
    inputs, labels = reshape_for(shape, x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, shape: tuple[int, ...], x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predictions = model(reshape_for(shape, x)).argmax(1).numpy()
    return float((predictions == y).mean())


# ---- deterministic export ----------------------------------------------------------------------
def onnx_bytes(model: nn.Module, shape: tuple[int, ...]) -> bytes:
    """ONNX export (TorchScript exporter, opset 17) keeping BatchNormalization nodes visible."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (torch.zeros(shape),), target, dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"], do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL, export_params=True,
        )
        proto = onnx.load_from_string(target.read_bytes())
    proto.doc_string = ""
    for node in proto.graph.node:  # no source locations or stack traces
        node.doc_string = ""
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(model: nn.Module, shape: tuple[int, ...], how: str) -> bytes:
    """torch.jit.save archive, rewritten without debug source paths and with a fixed serialization id."""
    with warnings.catch_warnings():  # torch.jit announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        if how == "script":
            compiled = torch.jit.script(model)
        else:
            compiled = torch.jit.trace(model, (torch.zeros(shape),), _store_inputs=False)
        buffer = io.BytesIO()
        extra = {EXTRA_FILE: json.dumps({"input_shape": list(shape)})}
        torch.jit.save(compiled, buffer, _extra_files=extra)
    return _deterministic_zip(buffer.getvalue())


def _deterministic_zip(raw: bytes) -> bytes:
    """Copy every record with fixed metadata; drop *.debug_pkl (absolute source paths of this
    machine) and replace the random .data/serialization_id by a hash of the content."""
    records: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            records.append((info.filename, archive.read(info)))
    digest = hashlib.sha256()
    for name, data in records:
        if not name.endswith(".data/serialization_id"):
            digest.update(name.encode() + b"\0" + data)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in records:
            if name.endswith(".data/serialization_id"):
                data = digest.hexdigest()[:40].encode()
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            archive.writestr(info, data)
    return out.getvalue()


def check_twins(model: nn.Module, shape: tuple[int, ...], onnx_data: bytes, ts_data: bytes, x: np.ndarray) -> float:
    """Largest difference between the torch model, onnxruntime and the reloaded archive."""
    import onnxruntime as ort

    batch = reshape_for(shape, x[:1]).numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_data, options, providers=["CPUExecutionProvider"])
    got_onnx = session.run(None, {"input": batch})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reloaded = torch.jit.load(io.BytesIO(ts_data), map_location="cpu")
    with torch.no_grad():
        got_ts = reloaded(torch.from_numpy(batch)).numpy()
    return float(max(np.abs(got_onnx - expected).max(), np.abs(got_ts - expected).max()))


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # torch.jit.script writes module constants in set order, which follows str hashing
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_models")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = digits()
    for name, (_, shape, _, how) in MODELS.items():
        model = train(name, x_train, y_train)
        acc_train = accuracy(model, shape, x_train, y_train)
        acc_test = accuracy(model, shape, x_test, y_test)
        onnx_data = onnx_bytes(model, shape)
        ts_data = torchscript_bytes(model, shape, how)
        diff = check_twins(model, shape, onnx_data, ts_data, x_test)
        if diff > 1e-5:
            raise SystemExit(f"{name}: exported twins disagree with the model by {diff:.3g}")
        for suffix, data in ((".onnx", onnx_data), (".pt", ts_data)):
            path = out / f"{name}{suffix}"
            path.write_bytes(data)
            print(f"{path.name:12s} {len(data):7d} bytes  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
        print(f"{name:12s} train accuracy {acc_train:.4f}  test accuracy {acc_test:.4f}  twin diff {diff:.2g}")

    samples = out / "digits_samples.npz"
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_flat=x_test[:N_SAMPLES],  # [16, 64]: row i is an input of shape [1, 64] (mlp)
        x_image=x_test[:N_SAMPLES].reshape(N_SAMPLES, 1, 8, 8),  # [16, 1, 8, 8]: one [1, 1, 8, 8] input per i
        y=y_test[:N_SAMPLES],
    )
    samples.write_bytes(_deterministic_npz(buffer.getvalue()))
    print(f"{samples.name:12s} {samples.stat().st_size:7d} bytes")
    return 0


def _deterministic_npz(raw: bytes) -> bytes:
    """np.savez stamps the current time into the zip; rewrite it with a fixed one."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            dst.writestr(fixed, src.read(info))
    return out.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
