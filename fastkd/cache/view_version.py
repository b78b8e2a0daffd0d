"""The view-code version of a teacher cache's key: derived from what the real decode, view and augmentation
functions output on a fixed tiny fixture, so it changes whenever their pixels can, with nobody to bump it."""
from __future__ import annotations

import functools
import hashlib
import io

import numpy as np


def _fixture_jpeg(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def view_code_version() -> str:
    """16 hex digits: a sha256 of the uint8 (and normalised float) views that a fixed tiny in-memory fixture
    (one 48 x 40 photo, as JPEG and PNG) gives through the real decode, view and augmentation functions of
    every CPU path: PIL and the libjpeg window decoder (base squares, whole, capped and cut views at DCT
    scales 1, 2 and 4), the memory backend's resize and ``roi_align`` cutting, pad-and-crop, the view boxes
    of both policies, normalisation and mixup/cutmix, erasing and cutout. It changes whenever any of them
    (or PIL, libjpeg or torch under them) starts to give other pixels. Computed once per process (~0.1 s)."""
    import torch

    from fastkd.pipelines import decode
    from fastkd.pipelines.augment import AugmentConfig, Augmenter
    from fastkd.pipelines.held_photos import held_shapes, resize_views
    from fastkd.pipelines.loader import normalise_nhwc
    from fastkd.pipelines.resize import cut_views
    from fastkd.pipelines.view_policy import ViewPolicy, pad_crop_flip

    h = hashlib.sha256()

    def add(name: str, value) -> None:
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())

    with torch.random.fork_rng(devices=[]):
        y, x = np.mgrid[0:40, 0:48]
        image = np.stack([(x * 5 + y * 3) % 256, (x * y + 7 * y) % 256, (255 - 4 * x + ((x ^ y) & 15) * 9) % 256],
                         2).astype(np.uint8)
        jpeg, png = _fixture_jpeg(image, "JPEG"), _fixture_jpeg(image, "PNG")
        for name, data in (("jpeg", jpeg), ("png", png)):
            add(f"{name}.base", decode.base_image(data, 16))
            add(f"{name}.whole", decode.decode_whole(data))
            add(f"{name}.capped", decode.capped_image(data, 20))
            for box in ((4, 3, 24, 20, 0), (2.5, 1.25, 33.3, 30.1, 1), (0, 0, 48, 40, 1), (8, 0, 40, 40, 0)):
                add(f"{name}.cut{box}", decode.cut_view(data, box, 8 if box[2] >= 40 else 16))
        sizes = np.array([[48.0, 40.0], [40.0, 48.0], [300.0, 200.0], [17.0, 90.0]])
        rrc = ViewPolicy.for_resolution(72, True)
        for policy, size in ((ViewPolicy.for_resolution(16, True), None), (rrc, sizes),
                             (ViewPolicy.for_resolution(72, False), sizes)):
            view = policy.sample(3, 1, np.arange(4), size)
            add(f"policy{policy.out}{policy.train}.box", view["box"])
            add(f"policy{policy.out}{policy.train}.flip", view["flip"])
        whole = torch.from_numpy(decode.decode_whole(jpeg))
        boxes = np.array([[4, 3, 24, 20, 0], [2.5, 1.25, 33.3, 30.1, 1], [0, 0, 48, 40, 1], [10.5, 7, 5, 6, 0]])
        add("held", held_shapes(np.array([(48, 40), (40, 48)], dtype=[("width", "i8"), ("height", "i8")]), 20))
        add("resize_views", resize_views([whole] * 4, boxes, 16))
        add("cut_views", cut_views([whole.permute(2, 0, 1)] * 4, boxes, 16))
        base = torch.from_numpy(np.stack([decode.base_image(jpeg, 16), decode.base_image(png, 16)] * 2))
        box = torch.tensor([[-2.0, 1, 16, 16], [0, 0, 16, 16], [2, -2, 16, 16], [1, 1, 16, 16]])
        crops = pad_crop_flip(base, box, torch.tensor([True, False, True, False]), 2)
        add("pad_crop_flip", crops)
        mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1) * 255
        x = normalise_nhwc(base, mean, std).permute(0, 3, 1, 2)
        add("normalised", x)
        for cfg in (AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0, erasing_p=0.5, cutout=0.5),
                    AugmentConfig(erasing_p=1.0), AugmentConfig(cutmix_alpha=1.0)):
            out, targets, extra = Augmenter(cfg, 3, 16, mean, std, 5)(x, torch.arange(4) % 5, np.arange(4), 2, 1)
            add(f"augment{cfg}", out)
            add(f"augment{cfg}.targets", targets if targets is not None else torch.zeros(0))
    return h.hexdigest()[:16]
