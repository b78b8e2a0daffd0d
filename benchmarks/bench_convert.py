"""Converter throughput: ``convert('imagefolder', ...)`` with one worker against all cores.

    python benchmarks/bench_convert.py                       # synthetic: 2000 JPEG photos of 500x375
    python benchmarks/bench_convert.py --images 500 --size 640x480
    python benchmarks/bench_convert.py --root /data/photos   # any imagefolder tree (train/<class>/...)

Without --root, a synthetic imagefolder tree is written once to a temporary folder (smooth random
images, as in the tests, so they compress like photos; 10 classes, JPEG quality 90) and removed at
the end. Each setting converts the whole tree to a fresh output folder (formats and --max-side as
given, default ffcv+dali and 256) and is timed end to end: reading the layout, decoding, resizing,
encoding, shards, .beton files and manifest, after an untimed warm-up conversion of 16 small images
(first-call imports). ``--repeats`` runs each setting several times and keeps
the fastest (settings alternate, so a slow spell hits both). Other jobs on the machine skew the
speed-up: the 1-minute load average before and after is recorded. Results: a table on stdout and JSON
(machine, settings, one row per worker count) at --out (default benchmarks/results/convert.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from fastkd.atomic import atomic_write_json
from fastkd.bench.machine import machine_info
from fastkd.converters.convert import ConvertOptions, convert
from fastkd.errors import UserError

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "convert.json")


def make_photo(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image, distinct per seed (tests/layout_tools.make_image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.BILINEAR))


def build_tree(root: str, images: int, width: int, height: int, classes: int = 10) -> None:
    for i in range(images):
        folder = os.path.join(root, "train", f"class_{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(make_photo(i, height, width)).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1e6


def format_table(result: dict) -> str:
    rows = [["workers", "images", "seconds", "images/s", "speed-up", "MB written"]]
    for r in result["rows"]:
        rows.append([str(r["workers"]), str(r["images"]), f"{r['seconds']:.2f}", f"{r['images_per_s']:.1f}",
                     f"{r['speedup']:.2f}x", f"{r['mb_written']:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(root: str, formats, max_side: int, workers_list, repeats: int, tmp: str) -> list:
    warm = os.path.join(tmp, "warmup")  # untimed: first-call imports and compilation (cv2, ffcv writer)
    if not os.path.isdir(warm):
        build_tree(warm, 16, 64, 48, classes=2)
    for w in workers_list:
        shutil.rmtree(warm + "-out", ignore_errors=True)
        convert("imagefolder", warm, warm + "-out", ConvertOptions(formats=tuple(formats), workers=w, progress=False))
    shutil.rmtree(warm + "-out", ignore_errors=True)
    best = {w: None for w in workers_list}
    mb = {}
    for rep in range(repeats):
        for w in workers_list:
            out = os.path.join(tmp, f"out-w{w}")
            shutil.rmtree(out, ignore_errors=True)
            opts = ConvertOptions(formats=tuple(formats), max_side=max_side, workers=w, progress=False)
            t0 = time.perf_counter()
            manifest = convert("imagefolder", root, out, opts)
            seconds = time.perf_counter() - t0
            count = sum(s["count"] for s in manifest["splits"].values())
            mb[w] = folder_mb(out)
            print(f"  repeat {rep + 1}/{repeats}, workers {w}: {count} images in {seconds:.2f} s", file=sys.stderr)
            if best[w] is None or seconds < best[w][0]:
                best[w] = (seconds, count)
            shutil.rmtree(out, ignore_errors=True)
    base = best[workers_list[0]][0]
    return [{"workers": w, "images": best[w][1], "seconds": round(best[w][0], 3),
             "images_per_s": round(best[w][1] / best[w][0], 2), "speedup": round(base / best[w][0], 3),
             "mb_written": round(mb[w], 2)} for w in workers_list]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", help="an imagefolder tree to convert (default: a synthetic one in a temp folder)")
    p.add_argument("--images", type=int, default=2000, help="synthetic images (without --root)")
    p.add_argument("--size", default="500x375", help="synthetic image WIDTHxHEIGHT")
    p.add_argument("--formats", default="ffcv,dali")
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", help="worker counts to time (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is kept")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON results path")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    workers_list = args.workers or sorted({1, cores})
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size {args.size!r} is not WIDTHxHEIGHT", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="fastkd-bench-convert-") as tmp:
            root, gen_s = args.root, None
            if root is None:
                root = os.path.join(tmp, "photos")
                t0 = time.perf_counter()
                build_tree(root, args.images, width, height)
                gen_s = time.perf_counter() - t0
                print(f"wrote {args.images} synthetic {width}x{height} JPEGs in {gen_s:.1f} s", file=sys.stderr)
            source_mb = folder_mb(root)
            load_before = os.getloadavg()[0]
            rows = run(root, formats, args.max_side, workers_list, args.repeats, tmp)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "machine": machine_info(),
        "settings": {"root": args.root or "synthetic", "images": rows[0]["images"],
                     "synthetic_size": None if args.root else [width, height], "source_mb": round(source_mb, 2),
                     "formats": formats, "max_side": args.max_side, "storage": "jpg", "jpeg_quality": 90,
                     "repeats": args.repeats, "generation_s": round(gen_s, 2) if gen_s is not None else None,
                     "timed": "whole convert() call: layout scan, decode, resize, encode, shards, betons, manifest",
                     "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},  # before, after
        "rows": rows,
    }
    print(format_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
