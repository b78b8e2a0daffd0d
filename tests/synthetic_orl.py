"""A synthetic ORL tree (40 people x 10 distinct 92x112 grey PGMs) with known pixels, for converter tests;
the ``fake_orl`` fixture (conftest.py) builds one per test module."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fastkd.converters.convert import ConvertOptions

PEOPLE, PHOTOS = 40, 10
H, W = 112, 92
SPLIT_KEYS = {
    "train": [(p, k) for p in range(1, PEOPLE + 1) for k in range(1, 9)],
    "test": [(p, k) for p in range(1, PEOPLE + 1) for k in (9, 10)],
}


def convert_opts(**kw) -> ConvertOptions:
    """Quiet conversion options, shards only unless ``formats`` says otherwise."""
    kw.setdefault("progress", False)
    kw.setdefault("formats", ("dali",))
    return ConvertOptions(**kw)


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """Random 14x12 grey noise upsampled to 92x112: distinct per draw, smooth enough for JPEG."""
    low = rng.integers(0, 256, (14, 12), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((W, H), Image.BILINEAR), dtype=np.uint8)


def build(root: Path) -> dict:
    """Writes ``root/s<p>/<k>.pgm``; returns {(person, photo): uint8 (112, 92) pixels}."""
    rng = np.random.default_rng(1234)
    pixels = {}
    for p in range(1, PEOPLE + 1):
        (root / f"s{p}").mkdir(parents=True)
        for k in range(1, PHOTOS + 1):
            img = smooth_image(rng)
            Image.fromarray(img).save(root / f"s{p}" / f"{k}.pgm")
            pixels[(p, k)] = img
    assert len({v.tobytes() for v in pixels.values()}) == PEOPLE * PHOTOS  # all distinct
    return pixels
