"""The teacher tax and the teacher cache: training throughput of a student alone, with KD, and with KD
from a teacher-output cache, in one run on one machine, on fixed pairs and synthetic photos.

    python benchmarks/bench_kd_step.py                          # 320 synthetic 320 px JPEGs, 3 epochs each
    python benchmarks/bench_kd_step.py --images 1280 --epochs 5 --pairs ResNet50:mobilenet_v2:112

The protocol is ``fastkd.bench.kd`` (``fastkd bench kd`` runs it on a pair and data of your own): per pair
``TEACHER:STUDENT:RES`` (default ResNet50 and ResNet18 -> MobileNetV2 at 112 px with torchvision's standard
stems, ResNet50 -> MobileNetV2 at 32 px with fastkd's low-resolution stems, and a zoo pair: timm's ConvNeXt-T ->
torchvision's MobileNetV3-Small at 112 px; random-init teachers saved as state dicts), each row a full
``fastkd train`` (batch 32, 2 workers, crop + flip views, the torch backend): (a) ``student``, (a')
``student_nchw`` (``--no-channels-last``), (b) ``kd_online``, (c) ``kd_fill`` (``--teacher-cache`` on an empty
folder), (d) ``kd_cached`` (reading it), and ``plain``, a hand-written PyTorch loop (ImageFolder + DataLoader)
training the same student on the same stored JPEGs.

Rate of a row: the median over its epochs after the first (warm-up) of the epoch's training images/s. Printed:
(d)/(a), (b)/(a), (c)/(b), (a)/plain, (a')/plain, then per pair the cache's bytes per view (float32, float16,
top-``--cache-topk``), its size for the run's epochs and the projected hours (``fastkd.bench.kd``'s docstring).
JSON: ``results/kd_step.json`` (``--out``). Rows run one after another; on a shared machine compare ratios within
one run only.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_convert import build_tree  # noqa: E402

from fastkd.bench.kd import format_report, run_kd_bench, save_results  # noqa: E402
from fastkd.converters.convert import ConvertOptions, convert  # noqa: E402
from fastkd.malloc import keep_freed_memory  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kd_step.json")
PAIRS = ["ResNet50:mobilenet_v2:112", "ResNet18:mobilenet_v2:112", "ResNet50:mobilenet_v2:32",
         "timm:convnext_tiny:torchvision:mobilenet_v3_small:112"]


def parse_pair(spec: str):
    """``TEACHER:STUDENT:RES`` -> (teacher, student, res); a name may carry a zoo prefix (``timm:convnext_tiny``)."""
    from fastkd.models.zoo import SOURCES

    parts, names = spec.split(":"), []
    *tokens, res = parts
    while tokens:
        take = 2 if tokens[0] in SOURCES and len(tokens) > 1 else 1
        names.append(":".join(tokens[:take]))
        tokens = tokens[take:]
    if len(names) != 2 or not res.isdigit():
        raise SystemExit(f"--pairs {spec!r}: expected TEACHER:STUDENT:RES (names may be timm:NAME / torchvision:NAME)")
    return names[0], names[1], int(res)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=320, help="Synthetic JPEG photos (10 classes).")
    ap.add_argument("--side", type=int, default=320, help="Side of the synthetic photos (stored at it).")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per row; the first is warm-up.")
    ap.add_argument("--pairs", nargs="+", default=PAIRS, help="TEACHER:STUDENT:RES entries.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-topk", type=int, default=10, help="k of the top-k storage row.")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    pairs = [parse_pair(spec) for spec in args.pairs]
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    with tempfile.TemporaryDirectory(prefix="bench_kd_step-") as tmp:
        build_tree(os.path.join(tmp, "photos"), args.images, args.side, args.side)
        data = os.path.join(tmp, "data")
        convert("imagefolder", os.path.join(tmp, "photos"), data,
                ConvertOptions(max_side=args.side, val_fraction=0.1, progress=False))
        rows = []
        for teacher, student, res in pairs:
            rows.append(run_kd_bench(data, teacher, student, res, epochs=args.epochs, batch_size=args.batch_size,
                                     workers=args.workers, device=args.device, cache_topk=args.cache_topk, work=tmp))
            print(format_report(rows), flush=True)
    save_results(args.out, rows, vars(args), args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
