"""What a teacher cache is valid for: everything that changes the teacher's output on a view.

A run may read a cache only when every entry of its key equals the cache's; otherwise it is refused,
naming the entries that differ. ``epochs`` is the one ordered entry: a view of epoch ``e`` does not depend
on the total, so a cache of E epochs serves runs of up to E epochs.

The key says which pixels a view has: the backend's decode path (decoder, where it runs, how views are cut)
and, for the memory backend, the tier it holds photos in (whole, or capped); and which code made them:
:func:`view_code_version`, derived from what the real decode, view and augmentation functions output on a
fixed tiny fixture, so it changes whenever their output can change, with nobody to remember to bump it.
Under the key, every cached row also carries a fingerprint of the exact view it was computed on
(``store.view_fingerprint``), checked on every read.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
from typing import Dict, List, Optional

import numpy as np

from fastkd import __version__

FORMAT_VERSION = 2  # 2: per-row view fingerprints, decode path, memory tier and derived view version in the key


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
    from fastkd.pipelines.device_views import cut_views
    from fastkd.pipelines.memory_views import held_shapes, resize_views
    from fastkd.pipelines.views import ViewPolicy, pad_crop_flip

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
        normalise = getattr(__import__("fastkd.pipelines.loader", fromlist=["Loader"]).Loader, "_normalise_nhwc")
        holder = type("Normaliser", (), {"_rows": {}, "_mean": mean, "_std": std})()
        x = normalise(holder, base).permute(0, 3, 1, 2)
        add("normalised", x)
        for cfg in (AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0, erasing_p=0.5, cutout=0.5),
                    AugmentConfig(erasing_p=1.0), AugmentConfig(cutmix_alpha=1.0)):
            out, targets, extra = Augmenter(cfg, 3, 16, mean, std, 5)(x, torch.arange(4) % 5, np.arange(4), 2, 1)
            add(f"augment{cfg}", out)
            add(f"augment{cfg}.targets", targets if targets is not None else torch.zeros(0))
    return h.hexdigest()[:16]


def cache_key(cfg, loader, teacher: str, world: int, teacher_sha256: Optional[str] = None) -> Dict[str, object]:
    """The key of run ``cfg`` (a ``TrainConfig``) training on ``loader`` with architecture ``teacher``
    (weights ``cfg.teacher_weights``, whose sha256 is ``teacher_sha256`` when the caller read and hashed the
    bytes it loads). JSON-normalised so that it compares equal to a key read back from disk.

    - teacher: sha256 of the weights file (a fastkd checkpoint also names the stem) and architecture;
    - data: sha256 of the conversion's manifest, the split and its size, the backend (JPEG decoders of
      different backends may differ in the last bit of a pixel), its decode path (``Backend.decode_path``:
      decoder, where it runs, how views are cut) and the memory backend's holding tier (whole or capped,
      and the cap: ``--memory-limit`` can change it);
    - views: the view policy (resolution, crop kind, scale/ratio, flip), every augmentation option, seed,
      and :func:`view_code_version` (derived from the view code's output);
    - numerics: ``--amp``, ``--channels-last``, the device (type and GPU model) and torch's version (they
      change the teacher's output bits);
    - world size, only when mixup/cutmix pair positions of each rank's share of the epoch order;
    - the fastkd version and the cache format version.
    """
    import torch

    aug = loader.augment
    mixing = aug is not None and aug.mixing
    backend = loader.backend
    device = torch.device(loader.device)
    if device.type == "cuda":
        device_name = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        device_name = device.type
    key = {
        "format_version": FORMAT_VERSION,
        "fastkd_version": __version__,
        "teacher_sha256": teacher_sha256 or file_sha256(cfg.teacher_weights),
        "teacher": teacher,
        "manifest_sha256": file_sha256(loader.data.path("manifest.json")),
        "split": loader.split,
        "count": loader.count,
        "backend": cfg.backend,
        "decode_path": backend.decode_path,
        "memory_hold": getattr(backend, "hold", None),
        "device": device_name,
        "torch": torch.__version__,
        "view_version": view_code_version(),
        "views": dataclasses.asdict(loader.policy),
        "augment": dataclasses.asdict(aug) if aug is not None else None,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "world": world if mixing else None,
    }
    return json.loads(json.dumps(key))


def key_differences(cached: Dict[str, object], run: Dict[str, object]) -> List[str]:
    """Human-readable entries in which ``run`` cannot use a cache of key ``cached`` (empty: it can)."""
    out = []
    for name in sorted(set(cached) | set(run)):
        a, b = cached.get(name), run.get(name)
        if name == "epochs" and isinstance(a, int) and isinstance(b, int):
            if b > a:
                out.append(f"epochs (cache holds {a}, run needs {b})")
        elif a != b:
            if isinstance(a, str) and len(a) == 64:  # hashes: the first 12 digits say enough
                a, b = a[:12], str(b)[:12]
            out.append(f"{name} (cache {a}, run {b})")
    return out
