"""What a teacher cache is valid for: everything that changes the teacher's output on a view.

A run may read a cache only when every entry of its key equals the cache's; otherwise it is refused,
naming the entries that differ. ``epochs`` is the one ordered entry: a view of epoch ``e`` does not depend
on the total, so a cache of E epochs serves runs of up to E epochs.

The key says which pixels a view has: the backend's decode path (decoder, where it runs, how views are cut)
and, for the memory backend, the tier it holds photos in (whole, or capped); and which code made them:
:func:`view_code_version`, derived from what the real decode, view and augmentation functions output on a
fixed tiny fixture, so it changes whenever their output can change, with nobody to remember to bump it.
Under the key, every cached row also carries a fingerprint of the exact view it was computed on
(``fastkd.cache.fingerprint``), checked on every read.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional

from fastkd import __version__
from fastkd.hashing import sha256_file

from .view_version import view_code_version

FORMAT_VERSION = 2  # 2: per-row view fingerprints, decode path, memory tier and derived view version in the key


def cache_key(cfg, loader, teacher: str, world: int, teacher_sha256: Optional[str] = None) -> Dict[str, object]:
    """The key of run ``cfg`` (a ``TrainConfig``) training on ``loader`` with architecture ``teacher``
    (weights ``cfg.teacher_weights``, whose sha256 is ``teacher_sha256`` when the caller read and hashed the
    bytes it loads). JSON-normalised so that it compares equal to a key read back from disk.

    - teacher: sha256 of the weights file (a fastkd checkpoint also names the stem) and architecture;
    - data: sha256 of the conversion's manifest, the split and its rows per epoch (its size x the views per
      image, and ``views_per_image`` when it is over 1), the backend (JPEG decoders of
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
        "teacher_sha256": teacher_sha256 or sha256_file(cfg.teacher_weights),
        "teacher": teacher,
        "manifest_sha256": sha256_file(loader.data.path("manifest.json")),
        "split": loader.split,
        "count": loader.rows_per_epoch,
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
    if loader.views_per_image > 1:  # rows index * K + k (absent for one view per image: older caches stay valid)
        key["views_per_image"] = loader.views_per_image
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
