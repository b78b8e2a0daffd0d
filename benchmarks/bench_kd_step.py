"""The teacher tax and the teacher cache: training throughput of a student alone, with KD, and with KD
from a teacher-output cache, in one run on one machine.

    python benchmarks/bench_kd_step.py                          # 320 synthetic 320 px JPEGs, 3 epochs each
    python benchmarks/bench_kd_step.py --images 1280 --epochs 5 --pairs ResNet50:mobilenet_v2:112

Per pair ``TEACHER:STUDENT:RES`` (default ResNet50 and ResNet18 -> MobileNetV2 at 112 px with torchvision's
standard stems, ResNet50 -> MobileNetV2 at 32 px with fastkd's low-resolution stems, and a zoo pair: timm's
ConvNeXt-T -> torchvision's MobileNetV3-Small at 112 px; random-init teachers saved as state dicts), each a full ``fastkd train`` (batch 32, 2 workers, crop + flip
views, the torch backend):

- (a) ``student``: ``--method ce``, the student alone (fastkd's defaults, channels-last included);
- (a') ``student_nchw``: the same with ``--no-channels-last`` (the memory format the plain loop uses);
- (b) ``kd_online``: ``--method kd`` with the teacher run every step;
- (c) ``kd_fill``: the same with ``--teacher-cache`` on an empty folder (the fused loop writes the cache);
- (d) ``kd_cached``: the same again, reading the cache (the teacher is never loaded);
- ``plain``: a hand-written PyTorch loop training the same student on the same stored JPEGs (torchvision
  ``ImageFolder`` + ``DataLoader`` with per-sample equivalent transforms, SGD, cross-entropy).

Rate of a row: the median over its epochs after the first (warm-up) of the epoch's training images/s
(``train_images_per_s`` of ``metrics.jsonl``; the same definition for ``plain``). Printed: (d)/(a), (b)/(a),
(c)/(b), (a)/plain, (a')/plain. JSON: ``results/kd_step.json`` (``--out``). Rows run one after another; on a
shared machine compare ratios within one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_convert import build_tree  # noqa: E402

from fastkd.atomic import atomic_write_json  # noqa: E402
from fastkd.bench.loader import extract_imagefolder, baseline_transform  # noqa: E402
from fastkd.bench.machine import machine_info  # noqa: E402
from fastkd.converters.convert import ConvertOptions, convert  # noqa: E402
from fastkd.malloc import keep_freed_memory  # noqa: E402
from fastkd.models import create_model  # noqa: E402
from fastkd.pipelines import Loader, open_converted  # noqa: E402
from fastkd.tables import format_table  # noqa: E402
from fastkd.train.config import TrainConfig  # noqa: E402
from fastkd.train.trainer import train  # noqa: E402

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


def _median_rate(run_dir: str) -> float:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    rates = [r["train_images_per_s"] for r in rows[1:]] or [rows[0]["train_images_per_s"]]
    return statistics.median(rates)


def plain_loop(data, student: str, res: int, epochs: int, batch_size: int, workers: int, tmp: str) -> float:
    """Student-only training the way a PyTorch user writes it; median training images/s after epoch 1."""
    from torchvision.datasets import ImageFolder

    folder = os.path.join(tmp, "imagefolder")
    if not os.path.isdir(folder):
        extract_imagefolder(data, "train", folder)
    policy = Loader(data, "train", batch_size=batch_size, res=res, workers=0).policy
    ds = ImageFolder(folder, transform=baseline_transform(policy, data.mean, data.std))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                     persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model(student, data.num_classes, res <= 64, res=res)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        model.train()
        seen, start = 0, time.time()
        for x, y in dl:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        rates.append(seen / (time.time() - start))
    return statistics.median(rates[1:] or rates)


def run_pair(data_dir: str, teacher: str, student: str, res: int, args, tmp: str) -> dict:
    data = open_converted(data_dir)
    tag = f"{teacher}-{student}-{res}".replace(":", "-")
    weights = os.path.join(tmp, f"{teacher.replace(':', '-')}-{res}.pt")
    torch.manual_seed(0)
    torch.save(create_model(teacher, data.num_classes, res <= 64, res=res).state_dict(), weights)
    base = TrainConfig(data=data_dir, out="", student=student, epochs=args.epochs, batch_size=args.batch_size, lr=0.05,
                       res=res, workers=args.workers, device=args.device, eval_every=10**6, progress=False)
    kd = dict(method="kd", teacher=teacher, teacher_weights=weights)
    cache = os.path.join(tmp, f"cache-{tag}")
    runs = {"student": {}, "student_nchw": {"channels_last": False}, "kd_online": kd,
            "kd_fill": {**kd, "teacher_cache": cache}, "kd_cached": {**kd, "teacher_cache": cache}}
    rates = {}
    for name, extra in runs.items():
        out = os.path.join(tmp, f"{tag}-{name}")
        shutil.rmtree(out, ignore_errors=True)
        print(f"[{tag}] {name}", file=sys.stderr, flush=True)
        train(TrainConfig(**{**base.to_dict(), "out": out, **extra}))
        rates[name] = _median_rate(out)
    print(f"[{tag}] plain PyTorch loop", file=sys.stderr, flush=True)
    rates["plain"] = plain_loop(data, student, res, args.epochs, args.batch_size, args.workers, tmp)
    return {"pair": tag, "teacher": teacher, "student": student, "res": res,
            "images_per_s": {k: round(v, 2) for k, v in rates.items()},
            "cached_vs_student": round(rates["kd_cached"] / rates["student"], 3),
            "online_vs_student": round(rates["kd_online"] / rates["student"], 3),
            "fill_vs_online": round(rates["kd_fill"] / rates["kd_online"], 3),
            "student_vs_plain": round(rates["student"] / rates["plain"], 3),
            "student_nchw_vs_plain": round(rates["student_nchw"] / rates["plain"], 3)}


def format_result(rows) -> str:
    headers = ["pair", "(a) student img/s", "(a') NCHW", "(b) KD online", "(c) KD filling", "(d) KD cached",
               "plain loop", "(d)/(a)", "(b)/(a)", "(c)/(b)", "(a)/plain", "(a')/plain"]
    body = [[r["pair"], *(r["images_per_s"][k] for k in ("student", "student_nchw", "kd_online", "kd_fill", "kd_cached",
                                                          "plain")),
             r["cached_vs_student"], r["online_vs_student"], r["fill_vs_online"], r["student_vs_plain"],
             r["student_nchw_vs_plain"]] for r in rows]
    return format_table(headers, body, markdown=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=320, help="Synthetic JPEG photos (10 classes).")
    ap.add_argument("--side", type=int, default=320, help="Side of the synthetic photos (stored at it).")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per row; the first is warm-up.")
    ap.add_argument("--pairs", nargs="+", default=PAIRS, help="TEACHER:STUDENT:RES entries.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    with tempfile.TemporaryDirectory(prefix="bench_kd_step-") as tmp:
        build_tree(os.path.join(tmp, "photos"), args.images, args.side, args.side)
        data = os.path.join(tmp, "data")
        convert("imagefolder", os.path.join(tmp, "photos"), data,
                ConvertOptions(max_side=args.side, val_fraction=0.1, progress=False))
        rows = []
        for spec in args.pairs:
            teacher, student, res = parse_pair(spec)
            rows.append(run_pair(data, teacher, student, res, args, tmp))
            print(format_result(rows), flush=True)
    result = {"machine": machine_info(torch.device(args.device)), "settings": vars(args), "rows": rows,
              "table": format_result(rows)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
