"""What a teacher cache is valid for: everything that changes the teacher's output on a view.

A run may read a cache only when every entry of its key equals the cache's; otherwise it is refused,
naming the entries that differ. ``epochs`` is the one ordered entry: a view of epoch ``e`` does not depend
on the total, so a cache of E epochs serves runs of up to E epochs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Dict, List

from fastkd import __version__

FORMAT_VERSION = 1


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(cfg, loader, teacher: str, world: int) -> Dict[str, object]:
    """The key of run ``cfg`` (a ``TrainConfig``) training on ``loader`` with architecture ``teacher``
    (weights ``cfg.teacher_weights``). JSON-normalised so that it compares equal to a key read back from disk.

    - teacher: sha256 of the weights file (a fastkd checkpoint also names the stem) and architecture;
    - data: sha256 of the conversion's manifest, the split and its size, the backend (JPEG decoders of
      different backends may differ in the last bit of a pixel);
    - views: the view policy (resolution, crop kind, scale/ratio, flip), every augmentation option, seed;
    - numerics: ``--amp`` and ``--channels-last`` (they change the teacher's output bits);
    - world size, only when mixup/cutmix pair positions of each rank's share of the epoch order;
    - the fastkd version and the cache format version (the view functions could change between releases).
    """
    aug = loader.augment
    mixing = aug is not None and aug.mixing
    key = {
        "format_version": FORMAT_VERSION,
        "fastkd_version": __version__,
        "teacher_sha256": file_sha256(cfg.teacher_weights),
        "teacher": teacher,
        "manifest_sha256": file_sha256(loader.data.path("manifest.json")),
        "split": loader.split,
        "count": loader.count,
        "backend": cfg.backend,
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
