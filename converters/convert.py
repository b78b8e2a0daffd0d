"""Runs a conversion: official layout -> shards (+ DALI index), FFCV betons and manifest.

Atomic: everything is written under ``<out>.partial`` and renamed to ``<out>`` only once the manifest
(which lists the size and checksum of every file, see ``fastkd.converted``) is complete, so an
interrupted run never leaves a folder that looks converted. Deletes only what it made: ``--out`` must be
new, empty, or (with ``--overwrite``) an earlier conversion whose manifest lists every file in it; it may
not overlap ``--root``; ``<out>.partial`` and ``<out>.old`` are removed only when fastkd's marker
(``fastkd.ownership``) or manifest shows it made them. Resumable: shards are the unit of work; each finished shard leaves a ``.done.json``
record, and a rerun with the same dataset, root and options skips finished shards, so nothing is
duplicated or missed. Deterministic: the same inputs give byte-identical files.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from fastkd import __version__
from fastkd.log import log
from fastkd.atomic import atomic_write_json
from fastkd.converted import FORMAT, MANIFEST, SAMPLES, ShardReader, shard_name, write_manifest
from fastkd.errors import UserError
from fastkd.ownership import LOCK, MARKER, entries, foreign, is_temp, mark, marker_kind, remove_owned

from . import DATASETS
from .ffcv_writer import write_beton
from .images import CorruptImageError, channel_stats, encode_jpeg, encode_png, resize_max_side
from .shards import write_shard, write_table
from .spec import DatasetSource, carve_val

CONVERSION = "conversion"  # the marker kind of a conversion and of its work folder <out>.partial


@dataclass
class ConvertOptions:
    formats: Tuple[str, ...] = ("ffcv", "dali")
    max_side: Optional[int] = None  # None: the dataset's default (photos only)
    resize_side: str = "longer"  # which side max_side bounds
    jpeg_quality: int = 90
    storage: Optional[str] = None  # None: the dataset's default ("jpg" photos, "raw" small images)
    val_fraction: float = 0.0  # carve a seeded, class-stratified val split out of train
    val_seed: int = 0
    workers: int = 0  # 0: all cores
    per_shard: int = 5000
    skip_corrupt: bool = False
    overwrite: bool = False
    progress: bool = True
    extra: Dict[str, object] = field(default_factory=dict)  # dataset-specific reader options

    def fingerprint(self) -> dict:
        """The options that change the output bytes (a resume must match them)."""
        d = asdict(self)
        for k in ("workers", "overwrite", "progress"):
            d.pop(k)
        d["formats"] = list(self.formats)
        return d


def _encode_one(args):
    """Worker: load one sample from the official layout, resize, encode. Returns bytes and stats."""
    load, ref, storage, max_side, side, quality = args
    try:
        image = resize_max_side(load(ref), max_side, side)
    except CorruptImageError as exc:
        return None, str(exc), 0, 0, None
    payload = encode_jpeg(image, quality) if storage == "jpg" else encode_png(image)
    return payload, None, image.shape[0], image.shape[1], channel_stats(image)


def _progress(total: int, done: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="img", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.05)


def _convert_split(pool, source: DatasetSource, split: str, folder: str, opts: ConvertOptions, storage: str):
    data = source.splits[split]
    os.makedirs(folder, exist_ok=True)
    ext = "jpg" if storage == "jpg" else "png"
    max_side = opts.max_side if opts.max_side is not None else source.spec.default_max_side
    n_shards = max(1, -(-len(data) // opts.per_shard))
    records = []
    done = [os.path.join(folder, shard_name(k)[:-4] + ".done.json") for k in range(n_shards)]
    finished = sum(min(opts.per_shard, len(data) - k * opts.per_shard) for k in range(n_shards) if os.path.exists(done[k]))
    next_index = 0
    with _progress(len(data), finished, f"{source.spec.name}/{split}", opts.progress) as bar:
        for k in range(n_shards):
            if os.path.exists(done[k]):
                with open(done[k]) as f:
                    rec = json.load(f)
            else:
                lo, hi = k * opts.per_shard, min(len(data), (k + 1) * opts.per_shard)
                jobs = ((source.load, data.refs[i], storage, max_side, opts.resize_side, opts.jpeg_quality)
                        for i in range(lo, hi))
                items, skipped, sums, sq, npix, sizes = [], [], np.zeros(3), np.zeros(3), 0, set()
                for i, (payload, error, h, w, stats) in enumerate(pool.imap(_encode_one, jobs, chunksize=16), lo):
                    bar.update(1)
                    if error is not None:
                        if not opts.skip_corrupt:
                            raise UserError(error)
                        skipped.append(data.names[i])
                        continue
                    items.append((next_index + len(items), payload, int(data.labels[i]), h, w))
                    sums, sq, npix = sums + stats[0], sq + stats[1], npix + stats[2]
                    sizes.add((h, w))
                rows = write_shard(folder, k, ext, items)
                rec = {"rows": rows, "skipped": skipped, "stats": [sums.tolist(), sq.tolist(), npix],
                       "sizes": sorted(list(s) for s in sizes)}
                atomic_write_json(done[k], rec)
            next_index += len(rec["rows"])
            records.append(rec)
    rows = [r for rec in records for r in rec["rows"]]
    table = write_table(folder, rows)
    for path in done:
        os.remove(path)
    stats = [np.sum([np.array(rec["stats"][j]) for rec in records], axis=0) for j in range(3)]
    sizes = {tuple(s) for rec in records for s in rec["sizes"]}
    skipped = [name for rec in records for name in rec["skipped"]]
    return table, [shard_name(k) for k in range(n_shards)], skipped, stats, sizes


def _prepare_partial(partial: str, fingerprint: dict, progress: bool) -> None:
    """Reuse an interrupted run's finished shards when it had the same inputs and options."""
    state = os.path.join(partial, "resume.json")
    if os.path.isdir(partial):
        try:
            with open(state) as f:
                same = json.load(f) == fingerprint
        except (OSError, ValueError):
            same = False
        if same:
            if progress:
                log(f"resuming the interrupted conversion in {partial}")
            for dirpath, _, names in os.walk(partial):  # what a killed writer left (atomic writes: *.tmp)
                for name in names:
                    if name.endswith(".tmp"):
                        os.remove(os.path.join(dirpath, name))
            if marker_kind(partial) != CONVERSION:
                mark(partial, CONVERSION)  # the work folder of a fastkd from before the markers
            return
        remove_owned(partial, (CONVERSION,), legacy=_fastkd_partial)
    os.makedirs(partial)
    mark(partial, CONVERSION)
    atomic_write_json(state, fingerprint)


def _listing(names, most: int = 4) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _unlisted(folder: str) -> Optional[list]:
    """The files under ``folder`` that its fastkd manifest does not list (relative paths); None when it holds
    no fastkd manifest."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("checksums"), dict):
        return None
    listed = set(manifest["checksums"]) | {MANIFEST, MARKER, LOCK}
    extra = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
            if rel not in listed and not is_temp(name):
                extra.append(rel)
    return sorted(extra)


def _only_conversion(folder: str, names) -> bool:
    """``folder`` is a fastkd conversion and holds nothing its manifest does not list."""
    return _unlisted(folder) == []


def _fastkd_partial(folder: str, names) -> bool:
    """A work folder of a fastkd from before the markers (its resume state), or a finished one."""
    try:
        with open(os.path.join(folder, "resume.json")) as f:
            state = json.load(f)
        if isinstance(state, dict) and {"dataset", "options", "fastkd_version"} <= set(state):
            return True
    except (OSError, ValueError):
        pass
    return _only_conversion(folder, names)


def _check_out(out: str, overwrite: bool) -> None:
    """``--out`` is new, empty, or an earlier conversion holding only its own files (replaced with ``--overwrite``)."""
    names = entries(out)
    if not names:
        return
    extra = _unlisted(out)
    if extra is None:
        raise UserError(f"--out {out} holds files that are not a fastkd conversion ({_listing(names)}); fastkd "
                        "deletes only what it made: give a new or empty folder (--overwrite replaces only an earlier "
                        "conversion)")
    if extra:
        raise UserError(f"--out {out} holds a conversion and files fastkd did not write ({_listing(extra)}); move "
                        "them out of it, or give another --out")
    if not overwrite:
        raise UserError(f"{out} already holds a conversion; pass --overwrite to replace it")


def _check_apart(root: Optional[str], out: str, partial: str, old: str) -> None:
    """``--root`` (the dataset) and ``--out`` (with its work folders) neither coincide nor nest."""
    if root is None:
        return
    r = os.path.realpath(root)
    for path in (out, partial, old):
        p = os.path.realpath(path)
        if p == r or p.startswith(r.rstrip(os.sep) + os.sep) or r.startswith(p.rstrip(os.sep) + os.sep):
            raise UserError(f"--out {out} overlaps --root {root} ({path} is the same folder, inside it or around it); "
                            "write the conversion to a folder outside the dataset, and not around it")


def check_work_folders(partial: str, old: str) -> None:
    """``<out>.partial`` and ``<out>.old`` are fastkd's when they exist (they are replaced or removed)."""
    if foreign(partial, (CONVERSION,), legacy=_fastkd_partial):
        raise UserError(f"{partial} exists and is not the work folder of a fastkd conversion ({_listing(entries(partial)) or 'a file'}); "
                        "fastkd deletes only what it made: move it away, or give another --out")
    if foreign(old, (), legacy=_only_conversion):
        raise UserError(f"{old} exists and is not a conversion fastkd set aside ({_listing(entries(old)) or 'a file'}); "
                        "fastkd deletes only what it made: move it away, or give another --out")


def convert(dataset: str, root: Optional[str], out: str, opts: ConvertOptions) -> dict:
    entry = DATASETS.get(dataset)
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder path")
    partial, old = out + ".partial", out + ".old"
    if os.path.exists(out):  # before looking into --out: it may be the dataset itself
        _check_apart(root, out, partial, old)
    _check_out(out, opts.overwrite)
    source: DatasetSource = entry.read(root, **opts.extra)
    _check_apart(root, out, partial, old)
    check_work_folders(partial, old)
    if opts.val_fraction > 0:
        source = carve_val(source, opts.val_fraction, opts.val_seed)
    storage = opts.storage or source.spec.storage
    _prepare_partial(partial, {"dataset": entry.spec.name, "root": os.path.abspath(root) if root else None,
                               "options": opts.fingerprint(), "fastkd_version": __version__}, opts.progress)
    splits: Dict[str, dict] = {}
    train_stats = None
    with mp.get_context("fork").Pool(opts.workers or os.cpu_count() or 1) as pool:
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
                         "samples": f"dali/{split}/{SAMPLES}"},
            }
            if "ffcv" in opts.formats:
                os.makedirs(os.path.join(partial, "ffcv"), exist_ok=True)
                write_beton(os.path.join(partial, "ffcv", f"{split}.beton"), ShardReader(folder, shards), storage,
                            opts.progress)
                info["ffcv"] = f"ffcv/{split}.beton"
            splits[split] = info
    os.remove(os.path.join(partial, "resume.json"))
    manifest = write_manifest(partial, _manifest(source, root, storage, splits, train_stats, opts))
    if os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)  # an empty folder given as --out (rmdir removes nothing else)
    if os.path.lexists(out):  # move the previous conversion aside first: a crash never leaves neither
        _check_out(out, True)  # still only its own files
        remove_owned(old, (), legacy=_only_conversion)
        os.replace(out, old)
    os.replace(partial, out)
    try:
        remove_owned(old, (), legacy=_only_conversion)
    except UserError as exc:  # someone put files in it meanwhile: they stay
        log(f"warning: kept {old}: {exc}")
    return manifest


def _manifest(source: DatasetSource, root, storage: str, splits: dict, train_stats, opts: ConvertOptions) -> dict:
    sums, sq, npix = train_stats
    mean = np.asarray(sums) / max(npix, 1)
    std = np.sqrt(np.maximum(np.asarray(sq) / max(npix, 1) - mean * mean, 1e-12))
    spec = source.spec
    return {
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
        "options": opts.fingerprint(),
        "extra": source.extra,
    }
