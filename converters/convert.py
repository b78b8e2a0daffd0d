"""Runs a conversion: official layout -> shards (+ DALI index), FFCV betons and manifest, atomically.

Everything is written under ``<out>.partial`` and renamed to ``<out>`` only once the manifest (which
lists checksums of every file) is complete, so an interrupted run never leaves a folder that looks
converted.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from fastkd import __version__
from fastkd.errors import UserError

from . import DATASETS
from .ffcv_writer import write_beton
from .images import CorruptImageError, channel_stats, encode_jpeg, encode_png, resize_max_side
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, checksum_tree, write_json_atomic
from .shards import ShardReader, ShardWriter
from .spec import DatasetSource


@dataclass
class ConvertOptions:
    formats: Tuple[str, ...] = ("ffcv", "dali")
    max_side: Optional[int] = None  # None: the dataset's default (photos only)
    resize_side: str = "longer"  # which side max_side bounds
    jpeg_quality: int = 90
    storage: Optional[str] = None  # None: the dataset's default ("jpg" photos, "raw" small images)
    workers: int = 0  # 0: all cores
    per_shard: int = 5000
    skip_corrupt: bool = False
    overwrite: bool = False
    progress: bool = True
    extra: Dict[str, object] = field(default_factory=dict)


def _encode_one(args):
    """Worker: load one sample from the official layout, resize, encode. Returns bytes and stats."""
    load, ref, storage, max_side, side, quality = args
    try:
        image = resize_max_side(load(ref), max_side, side)
    except CorruptImageError as exc:
        return None, str(exc), 0, 0, None
    payload = encode_jpeg(image, quality) if storage == "jpg" else encode_png(image)
    return payload, None, image.shape[0], image.shape[1], channel_stats(image)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _convert_split(pool, source: DatasetSource, split: str, folder: str, opts: ConvertOptions, storage: str):
    data = source.splits[split]
    writer = ShardWriter(folder, "jpg" if storage == "jpg" else "png", opts.per_shard)
    max_side = opts.max_side if opts.max_side is not None else source.spec.default_max_side
    jobs = ((source.load, ref, storage, max_side, opts.resize_side, opts.jpeg_quality) for ref in data.refs)
    skipped: List[str] = []
    sums, sq, npix = np.zeros(3), np.zeros(3), 0
    sizes = set()
    with _progress(len(data), f"{source.spec.name}/{split}", opts.progress) as bar:
        for i, (payload, error, h, w, stats) in enumerate(pool.imap(_encode_one, jobs, chunksize=16)):
            bar.update(1)
            if error is not None:
                if not opts.skip_corrupt:
                    raise UserError(error)
                skipped.append(data.names[i])
                continue
            writer.write(len(writer.rows), payload, int(data.labels[i]), h, w)
            sums, sq, npix = sums + stats[0], sq + stats[1], npix + stats[2]
            sizes.add((h, w))
    table = writer.close()
    return table, writer.shards, skipped, (sums, sq, npix), sizes


def convert(dataset: str, root: Optional[str], out: str, opts: ConvertOptions) -> dict:
    entry = DATASETS.get(dataset)
    out = os.path.abspath(out)
    if os.path.exists(os.path.join(out, MANIFEST)) and not opts.overwrite:
        raise UserError(f"{out} already holds a conversion; pass --overwrite to replace it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder path")
    source: DatasetSource = entry.read(root, **opts.extra)
    storage = opts.storage or source.spec.storage
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    splits: Dict[str, dict] = {}
    train_stats = None
    workers = opts.workers or os.cpu_count() or 1
    with mp.get_context("fork").Pool(workers) as pool:
        for split in source.splits:
            folder = os.path.join(partial, "dali", split)
            table, shards, skipped, stats, sizes = _convert_split(pool, source, split, folder, opts, storage)
            if split == "train" or train_stats is None:
                train_stats = stats
            info = {
                "count": int(len(table)),
                "skipped_corrupt": skipped,
                "label_counts": np.bincount(table["label"], minlength=len(source.classes)).tolist(),
                "fixed_size": list(next(iter(sizes))) if len(sizes) == 1 else None,
                "max_height": int(table["height"].max()) if len(table) else 0,
                "max_width": int(table["width"].max()) if len(table) else 0,
                "dali": {"shards": [f"dali/{split}/{s}" for s in shards],
                         "index_files": [f"dali/{split}/{s[:-4]}.idx" for s in shards],
                         "samples": f"dali/{split}/samples.npy"},
            }
            if "ffcv" in opts.formats:
                os.makedirs(os.path.join(partial, "ffcv"), exist_ok=True)
                write_beton(os.path.join(partial, "ffcv", f"{split}.beton"), ShardReader(folder, shards), storage, opts.progress)
                info["ffcv"] = f"ffcv/{split}.beton"
            splits[split] = info
    sums, sq, npix = train_stats
    mean = sums / max(npix, 1)
    std = np.sqrt(np.maximum(sq / max(npix, 1) - mean * mean, 1e-12))
    spec = source.spec
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastkd_version": __version__,
        "dataset": spec.name,
        "source_root": os.path.abspath(root) if root else None,
        "layout": spec.layout,
        "num_classes": len(source.classes),
        "classes": source.classes,
        "class_order": source.class_order,
        "split_rule": source.split_rule,
        "splits": splits,
        "image": {"storage": storage, "channels": 3, "resolution": spec.resolution, "low_res": spec.low_res,
                  "default_res": spec.default_res},
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "options": {k: v for k, v in asdict(opts).items() if k not in ("progress", "overwrite")},
        "extra": source.extra,
    }
    manifest["options"]["formats"] = list(opts.formats)
    manifest["checksums"] = checksum_tree(partial)
    write_json_atomic(os.path.join(partial, MANIFEST), manifest)
    old = out + ".old"
    if os.path.exists(out):  # move the previous conversion aside first: a crash never leaves neither
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest
