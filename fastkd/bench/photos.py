"""A benchmark set of real-looking photos: an ImageFolder tree of JPEGs (q90) of 360-640 px, mostly not square.

Decoding cost grows with the entropy-coded size, so the images carry texture at several scales
(smooth colour fields, mid-scale blobs, fine grain) and a few hard edges, which JPEG-compresses to
about 2-4 bits per pixel like camera photos, rather than flat synthetic images that decode unrealistically fast.
Deterministic: the same (n, seed) give the same files.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fastkd.log import log

SIDES = (360, 640)
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)  # landscape mostly, some square and portrait


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3)."""
    image = np.zeros((height, width, 3), dtype=np.float32)
    for div, amp in ((48, 90.0), (12, 40.0), (3, 14.0)):  # coarse colour fields, blobs, texture
        small = rng.normal(0.0, 1.0, size=(max(2, height // div), max(2, width // div), 3)).astype(np.float32)
        for c in range(3):
            image[:, :, c] += amp * np.asarray(Image.fromarray(small[:, :, c]).resize((width, height), Image.BICUBIC))
    image += rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)  # sensor grain
    image += rng.uniform(60, 200, size=3).astype(np.float32)
    for _ in range(4):  # hard-edged shapes, like object outlines
        y, x = rng.integers(0, height - 30), rng.integers(0, width - 30)
        image[y : y + rng.integers(10, height // 3), x : x + rng.integers(10, width // 3)] += rng.uniform(-80, 80, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


GRATING_PERIOD, GRATING_AMPLITUDE = 24.0, 60.0  # pixels per cycle, grey levels


def grating(label: int, classes: int, height: int, width: int, phase: float) -> np.ndarray:
    """float32 (height, width): the class's stripes, a sinusoid at angle ``pi * label / classes`` with period
    :data:`GRATING_PERIOD` pixels; present over the whole photo, so any crop of it shows the class."""
    angle = np.pi * label / classes
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    along = x * np.cos(angle) + y * np.sin(angle)
    return GRATING_AMPLITUDE * np.sin(2 * np.pi * along / GRATING_PERIOD + phase).astype(np.float32)


def write_photo_set(root: str, n: int, classes: int = 10, seed: int = 0, progress: bool = True,
                    labelled: bool = False) -> str:
    """``root/train/c<k>/<i>.jpg`` for ``n`` photos (longer side 360-640 px); returns ``root``. Photo ``i`` is of
    class ``i mod classes``. ``labelled``: the class is in the pixels too (:func:`grating`'s stripes over the
    texture, at a random phase), so a network can learn it and the set measures accuracy; without it the content
    is random and only speed can be measured."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        longer = int(rng.integers(SIDES[0], SIDES[1] + 1))
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
        w, h = (longer, round(longer / aspect)) if aspect >= 1 else (round(longer * aspect), longer)
        folder = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(folder, exist_ok=True)
        image = photo(rng, h, w)
        if labelled:
            stripes = grating(i % classes, classes, h, w, float(rng.uniform(0, 2 * np.pi)))
            image = np.clip(image.astype(np.float32) + stripes[:, :, None], 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        if progress and (i + 1) % 200 == 0:
            log(f"  photos: {i + 1}/{n}")
    return root


def converted_photo_set(folder: str, n: int, progress: bool = True, val_fraction: float = 0.0,
                        labelled: bool = False) -> str:
    """``write_photo_set`` into ``folder/src``, converted (both formats, imagefolder's default ``--max-side``
    512: longer sides above it shrunk; ``val_fraction`` > 0 carves a val split) to ``folder/photos``."""
    from fastkd.converters.convert import ConvertOptions, convert

    src, out = os.path.join(folder, "src"), os.path.join(folder, "photos")
    write_photo_set(src, n, progress=progress, labelled=labelled)
    convert("imagefolder", src, out, ConvertOptions(progress=progress, val_fraction=val_fraction))
    return out
