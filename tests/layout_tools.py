"""Tools for tests that build miniature copies of official dataset layouts and check conversions."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image


def make_image(seed: int, height: int, width: int, grey: bool = False) -> np.ndarray:
    """A smooth random image (compresses like a photo, so JPEG errors stay small), distinct per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 1 if grey else 3), dtype=np.uint8)
    mode = "L" if grey else "RGB"
    img = Image.fromarray(small[:, :, 0] if grey else small, mode).resize((width, height), Image.BILINEAR)
    return np.asarray(img)


def write_image(path: str, image: np.ndarray, fmt: Optional[str] = None, quality: int = 95) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(image)
    fmt = fmt or ("JPEG" if path.lower().endswith((".jpg", ".jpeg")) else None)
    im.save(path, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def decoded_split(out: str, split: str) -> Dict[str, np.ndarray]:
    """Labels and decoded RGB images of a converted split, in dataset-index order (from the shards)."""
    from fastkd.converters.images import decode_bytes
    from fastkd.converted import ShardReader

    manifest = json.load(open(os.path.join(out, "manifest.json")))
    shards = [s.rsplit("/", 1)[1] for s in manifest["splits"][split]["dali"]["shards"]]
    reader = ShardReader(os.path.join(out, "dali", split), shards)
    return {"labels": reader.table["label"].copy(), "images": [decode_bytes(reader.payload(i)) for i in range(len(reader))]}


def convert_once(tmp_path_factory, dataset: str, root, **options) -> Tuple[str, dict]:
    """(output folder, manifest) of ``dataset`` converted from ``root`` into a fresh temp folder, once per
    test module (a module-scoped fixture's body); ``options`` go to ``ConvertOptions(progress=False, ...)``."""
    from fastkd.converters.convert import ConvertOptions, convert

    out = tmp_path_factory.mktemp(f"{dataset}-out") / "data"
    return str(out), convert(dataset, str(root), str(out), ConvertOptions(progress=False, **options))


def check_split(out: str, manifest: dict, split: str, labels: Sequence[int], images: Iterable[np.ndarray],
                exact: bool) -> None:
    """The converted ``split`` holds ``labels`` and, decoded, ``images`` (RGB arrays), in this order."""
    assert manifest["splits"][split]["count"] == len(labels)
    got = decoded_split(out, split)
    assert got["labels"].tolist() == np.asarray(labels).tolist()
    for image, want in zip(got["images"], images):
        assert_pixels_close(image, want, exact=exact)


def assert_pixels_close(got: np.ndarray, want: np.ndarray, exact: bool) -> None:
    """Raw storage must be exact; JPEG within 4 grey levels mean absolute error."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        err = np.abs(got.astype(np.int16) - want.astype(np.int16)).mean()
        assert err < 4.0, f"JPEG round trip off by {err:.2f} grey levels on average"


def check_ffcv(out: str, splits: Sequence[str]) -> None:
    """The .beton of each split holds as many samples as the manifest says, with our three fields."""
    from ffcv.reader import Reader

    manifest = json.load(open(os.path.join(out, "manifest.json")))
    for split in splits:
        reader = Reader(os.path.join(out, manifest["splits"][split]["ffcv"]))
        assert reader.num_samples == manifest["splits"][split]["count"]
        assert list(reader.field_names) == ["image", "label", "index"]


def train_one_epoch(out: str, tmp: str, res: int = 32, extra: List[str] = ()) -> dict:
    """`fastkd train` for one epoch on a converted folder (torch backend, CPU); returns the summary."""
    run = os.path.join(tmp, "train-run")
    cmd = [sys.executable, "-m", "fastkd", "train", "--data", out, "--out", run, "--model", "shufflenet_v2_x0_5",
           "--epochs", "1", "--batch-size", "8", "--res", str(res), "--workers", "0", "--device", "cpu", "--quiet",
           *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def encode_jpeg(pixels: np.ndarray, quality: int, mode: str = "RGB", **save) -> bytes:
    """uint8 (H, W, 3) ``pixels`` as JPEG bytes, converted to ``mode`` first (e.g. "L", "CMYK"); ``save``: more
    PIL options (progressive, subsampling...)."""
    im = Image.fromarray(pixels)
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, **save)
    return buf.getvalue()
