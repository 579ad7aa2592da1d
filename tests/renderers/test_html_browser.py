"""The HTML page in a real browser: headless Chromium renders it to a non-blank screenshot and a DOM
with the checks table and one bar per layer (skipped where Chromium is not installed)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from stabaudit.renderers import RENDERERS, OutputFormat
from tests.report_factory import make_report

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1200, 1600
# The per-layer chart's bar area in page pixels: the 24 px body margin plus the SVG's bar area
# (x 230..750); the summary table above it is ~420 px tall at the default font size, so the bars
# lie in the band y 400..700 whatever the fonts.
BAR_BAND = (slice(400, 700), slice(24 + 230, 24 + 750))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    if not Path(found).is_file():
        pytest.skip("chromium is not installed")
    return found


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
    ]
    return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=60, check=False)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) as an (h, w, channels) array:
    the IDAT stream inflated, then each scanline's filter undone (PNG spec §9)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(bytes(idat)), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = int(raw[y, 0]), raw[y, 1:]
        if kind == 0:  # None
            row = line.copy()
        elif kind == 1:  # Sub: a running sum per channel, modulo 256
            row = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            row = line + prior
        else:  # Average, Paeth: each byte depends on the one just decoded, so byte by byte
            cur, up = bytearray(line.tobytes()), prior.tobytes()
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                if kind == 3:
                    cur[i] = (cur[i] + ((left + up[i]) >> 1)) & 0xFF
                else:
                    upleft = up[i - bpp] if i >= bpp else 0
                    cur[i] = (cur[i] + _paeth(left, up[i], upleft)) & 0xFF
            row = np.frombuffer(bytes(cur), dtype=np.uint8)
        out[y] = row
        prior = row
    return out.reshape(height, width, bpp)


def _artifacts_dir() -> Path:
    env = os.environ.get("STABAUDIT_TEST_ARTIFACTS")
    return Path(env) if env else REPO_ROOT / "build" / "test-artifacts"


def test_decode_png_undoes_every_filter():
    # A 3x5 RGB image, one scanline per filter type 0..4, against the pixels it encodes.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 3, 3), dtype=np.int64)
    flat = pixels.reshape(5, 9)
    lines, prior = [], np.zeros(9, dtype=np.int64)
    for kind, row in enumerate(flat):
        left = np.concatenate([[0, 0, 0], row[:-3]])
        upleft = np.concatenate([[0, 0, 0], prior[:-3]])
        pred = [
            np.zeros(9, dtype=np.int64),
            left,
            prior,
            (left + prior) // 2,
            np.array([_paeth(int(a), int(b), int(c)) for a, b, c in zip(left, prior, upleft, strict=True)]),
        ][kind]
        lines.append(bytes([kind]) + bytes(((row - pred) % 256).astype(np.uint8)))
        prior = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 5, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + chunk(b"IEND", b"")
    )
    assert np.array_equal(decode_png(png), pixels.astype(np.uint8))


def test_page_renders_in_headless_chromium(tmp_path):
    _chromium()
    page = tmp_path / "report.html"
    page.write_text(RENDERERS.get(OutputFormat.HTML)(make_report()), encoding="utf-8")
    url = page.resolve().as_uri()

    shot = tmp_path / "report.png"
    done = _run([f"--screenshot={shot}", url], tmp_path)
    assert shot.is_file(), done.stderr[-2000:]
    artifacts = _artifacts_dir()
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, artifacts / "report-html-chromium.png")

    image = decode_png(shot.read_bytes())[..., :3]
    assert image.shape == (HEIGHT, WIDTH, 3)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) >= 50, f"only {len(colours)} distinct colours: a blank page?"
    bars = image[BAR_BAND]
    # The certified bars are #0969da: pixels of that blue must be there, and plenty of non-white.
    blue = np.all(np.abs(bars.astype(int) - [0x09, 0x69, 0xDA]) <= 8, axis=-1)
    assert blue.sum() >= 500, f"{blue.sum()} bar-blue pixels in the bar band"
    assert (bars.min(axis=-1) < 200).sum() >= 1000

    dom = _run(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table class="checks">' in dom.stdout
    assert dom.stdout.count("<rect ") == len(make_report().layers) == 3
    for name in ("SA101", "SA402", "fc1", "conv", "relu"):
        assert name in dom.stdout
