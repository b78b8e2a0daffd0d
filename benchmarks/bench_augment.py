"""Augmentation throughput on small images: fastkd's memory backend + vectorised views vs per-sample torchvision.

    python benchmarks/bench_augment.py                       # synthetic 32x32 set of 5,000 images (temp dir)
    python benchmarks/bench_augment.py --data /data/cifar10 --res 32 --epochs 5 --device cuda

Rows (all at the same batch size and workers, on the same machine, in one run; epochs run round-robin,
epoch e of every loader then e + 1, as ``fastkd bench loader`` does, and every batch is consumed):

- ``memory``: fastkd ``Loader(backend="memory")``: the split decoded once into one uint8 tensor on the
  device (at res <= 64 held zero-padded and mirrored), each batch's pad-and-crop + flip views cut by one
  gather from it (``index_select`` + vectorised views above res 64), normalised, then the batch
  augmentation. Its one-time decode is ``build_s``, not part of images/s.
- ``torch``: fastkd ``Loader(backend="torch")``: PIL decode in DataLoader workers, same device-side views.
- ``memory_no_views``: not a loader, a diagnostic: the memory backend's ``iter_epoch`` batches
  (``index_select`` of the held uint8 images, converted to float when summed) without views, normalisation
  or augmentation; it shares the ``memory`` row's decoded tensor.
- ``dataloader``: torchvision ``ImageFolder`` over the same stored images (extracted to a temp folder) +
  ``DataLoader`` with per-sample transforms in the workers: RandomCrop(res, padding=res // 8),
  RandomHorizontalFlip, ToTensor, Normalize (Resize + CenterCrop first only when the stored images are not
  already res x res squares; RandomResizedCrop above res 64, like ``fastkd bench loader``).

``--augment`` (only where the Loader has an ``augment`` parameter) adds fastkd's batch augmentation:
``erasing``, ``cutout``, ``mixup``, ``cutmix`` (comma-separated: ``AugmentConfig.paper(...)``, the papers'
settings) or a JSON object of ``AugmentConfig`` fields, and the baseline gets the same ops the torchvision
way: ``RandomErasing(p, scale, ratio, value="random")`` and a per-sample ``Cutout`` after Normalize, and
mixup/cutmix with ``v2.MixUp`` / ``v2.CutMix`` on each batch in ``collate_fn`` (the torchvision reference
recipe; one of the two per batch when both are on, where fastkd chooses per pair).

Without ``--data`` a CIFAR-sized synthetic set is built: ``--images`` random smooth 32x32 RGB images in
10 classes (PNG), converted with ``ConvertOptions(storage="raw", formats=("dali",))``.
Output: a table on stdout and JSON (machine, settings, rows, ``memory_vs_dataloader``), written atomically
to ``--out`` (default benchmarks/results/augment.json). The issue's goal is memory/DataLoader >= 20x
(total images / total seconds of the timed epochs); the ratio of the median epochs, less sensitive to
one epoch slowed by another job on a shared machine, is printed and saved beside it.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shlex
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch

from fastkd.bench.loader import bench_script_main
from fastkd.errors import UserError

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "augment.json")
BASELINE = "dataloader"
NAMES = {BASELINE: "torchvision DataLoader", "memory": "fastkd memory", "torch": "fastkd torch",
         "memory_no_views": "fastkd memory, no views"}
GOAL = 20.0


def make_synthetic(root: str, images: int, side: int = 32, classes: int = 10, seed: int = 0) -> None:
    """``root/<class>/<i>.png``: smooth random images (4x4 noise, bilinear upsampling, light grain)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c:02d}"), exist_ok=True)
    for i in range(images):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        x = np.asarray(coarse.resize((side, side), Image.BILINEAR), dtype=np.int16)
        x = np.clip(x + rng.integers(-8, 9, x.shape), 0, 255).astype(np.uint8)
        Image.fromarray(x).save(os.path.join(root, f"class{i % classes:02d}", f"{i:06d}.png"), compress_level=1)


def loader_augment(text: str, low_res: bool = True):
    """``--augment`` text -> the Loader's ``AugmentConfig``."""
    from fastkd.pipelines.augment import AugmentConfig

    if text.lstrip().startswith("{"):
        try:
            return AugmentConfig(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise UserError(f"--augment {text!r}: {exc}")
    ops = [op.strip() for op in text.split(",") if op.strip()]
    known = ("erasing", "cutout", "mixup", "cutmix")
    if not ops or any(op not in known for op in ops):
        raise UserError(f"--augment {text!r}: give some of {', '.join(known)} (comma-separated) or a JSON object")
    return AugmentConfig.paper(low_res=low_res, **{op: True for op in ops})


class Cutout:
    """Per-sample cutout on a normalised (C, H, W) tensor, as DeVries & Taylor's reference code: a ``side``
    square, centre uniform over the pixels, clipped at the border, zeroed; with probability ``p``."""

    def __init__(self, side: int, p: float = 1.0):
        self.side, self.p = side, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.p < 1 and torch.rand(()) >= self.p:
            return img
        h, w = img.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, x0 = max(0, cy - self.side // 2), max(0, cx - self.side // 2)
        img[..., y0 : min(h, cy - self.side // 2 + self.side), x0 : min(w, cx - self.side // 2 + self.side)] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(side={self.side}, p={self.p})"


def baseline_transform(policy, mean, std, square: bool, augment=None):
    """Per-sample torchvision transforms; ``augment``: None or the fastkd ``AugmentConfig`` whose random
    erasing (``RandomErasing``, value="random") and cutout (:class:`Cutout`) to mirror."""
    from torchvision import transforms as T

    from fastkd.bench.loader import baseline_transform as loader_bench_transform

    if policy.kind == "pad_crop" and square:  # the stored images are already the base size
        steps = [T.RandomCrop(policy.out, padding=max(1, policy.base // 8)), T.RandomHorizontalFlip(),
                 T.ToTensor(), T.Normalize(mean, std)]
    else:
        steps = list(loader_bench_transform(policy, mean, std).transforms)
    if augment is not None and augment.erasing_p > 0:
        steps.append(T.RandomErasing(p=augment.erasing_p, scale=tuple(augment.erasing_scale),
                                     ratio=tuple(augment.erasing_ratio), value="random"))
    if augment is not None and augment.cutout > 0 and augment.cutout_p > 0:
        from fastkd.pipelines.augment import cutout_side

        steps.append(Cutout(cutout_side(augment, policy.out), augment.cutout_p))
    return T.Compose(steps)


class MixCollate:
    """The torchvision reference recipe for mixup/cutmix: ``default_collate`` then ``v2.MixUp`` /
    ``v2.CutMix`` (one of the two per batch when both are on) on the batch, in the DataLoader workers."""

    def __init__(self, augment, num_classes: int):
        from torchvision.transforms import v2

        ops = []
        if augment.cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes))
        if augment.mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes))
        self.mix = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def __call__(self, batch):
        return self.mix(*torch.utils.data.default_collate(batch))

    def __repr__(self) -> str:
        return f"MixCollate({self.mix!r})"


def run_augment_bench(data: str, split: str = "train", batch_size: int = 256, workers: int = 2, res: int = 32,
                      epochs: int = 3, warmup_epochs: int = 1, device="cpu", augment=None, seed: int = 0,
                      out_json=None, progress: bool = True, synthetic=None, command=None) -> dict:
    import torchvision

    from fastkd.bench.loader import consume, extract_imagefolder, measure_round_robin, publish_result
    from fastkd.bench.machine import machine_info
    from fastkd.pipelines import Loader, open_converted
    from fastkd.pipelines.view_policy import ViewPolicy

    if epochs < 1 or warmup_epochs < 0:
        raise UserError("--epochs must be at least 1 and --warmup-epochs at least 0")
    conv, dev = open_converted(data), torch.device(device)
    policy = ViewPolicy.for_resolution(res, train=True)
    conv.split(split)  # a UserError naming the splits if it is missing
    table = np.load(conv.path(f"dali/{split}/samples.npy"))
    square = bool((table["height"] == policy.base).all() and (table["width"] == policy.base).all())
    loader_kwargs, cfg, augment_info, collate = {}, None, None, None
    if augment is not None:
        if "augment" not in inspect.signature(Loader).parameters:
            raise UserError("--augment: this fastkd Loader has no augment parameter; leave --augment out")
        cfg = loader_augment(augment, low_res=policy.kind == "pad_crop")
        loader_kwargs["augment"] = cfg
        if cfg.mixing:
            collate = MixCollate(cfg, conv.num_classes)
        augment_info = {"arg": augment, "config": repr(cfg), "baseline_collate": repr(collate)}
    transform = baseline_transform(policy, conv.mean, conv.std, square, cfg)

    with tempfile.TemporaryDirectory(prefix="fastkd-bench-augment-") as tmp:
        extract_imagefolder(conv, split, tmp)

        def build_baseline():
            ds = torchvision.datasets.ImageFolder(tmp, transform=transform)
            dl = torch.utils.data.DataLoader(
                ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate,
                pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(seed))
            return dl, lambda dl, e: consume((x for x, _ in dl), dev)

        built = {}

        def build_fastkd(backend):
            built[backend] = Loader(conv, split, backend=backend, batch_size=batch_size, train=True, res=res,
                                    seed=seed, workers=workers, device=dev, **loader_kwargs)
            return built[backend], lambda ld, e: consume((b.images for b in ld.epoch(e)), dev)

        def build_no_views():
            if "memory" not in built:
                raise RuntimeError("the memory row failed to build")
            return built["memory"].backend, lambda bk, e: consume((x for x, _, _ in bk.iter_epoch(e)), dev)

        if progress:
            print(f"bench augment: {conv.split(split)['count']} images, res {res}, batch {batch_size}, "
                  f"workers {workers}, device {dev}", file=sys.stderr)
        rows = measure_round_robin({BASELINE: build_baseline, "memory": partial(build_fastkd, "memory"),
                         "torch": partial(build_fastkd, "torch"), "memory_no_views": build_no_views},
                        warmup_epochs, epochs, progress)
        built.clear()
    base = rows[BASELINE].get("images_per_s")
    for name, row in rows.items():
        row["loader"] = NAMES[name]
        ips = row.get("images_per_s")
        row["ratio"] = ips / base if ips and base else None
    ratio = rows["memory"].get("ratio")
    medians = [rows[k].get("median_images_per_s") for k in ("memory", BASELINE)]
    median_ratio = medians[0] / medians[1] if all(medians) else None  # robust to one slow epoch
    machine = machine_info(dev)
    machine["gpu_available"] = torch.cuda.is_available()
    notes = []
    if dev.type != "cuda":
        notes.append(("no GPU used: every loader ran on the CPU" +
                      (" (this machine has none)" if not torch.cuda.is_available() else "") +
                      "; on a GPU the memory backend's gathers and batch augmentation run on the device while "
                      "the DataLoader's per-sample work stays on the CPU workers, so its advantage is larger"))
        notes.append(f"on the CPU the fastkd rows' views (exact integer pad-crop + flip for res <= 64, grid_sample above), "
                     f"augmentation and normalisation run in the main "
                     f"process with {torch.get_num_threads()} intra-op thread(s) (--torch-threads), the DataLoader's "
                     f"transforms in its {workers} worker processes")
    result = {
        "machine": machine,
        "settings": {"command": command, "data": os.path.abspath(data), "dataset": conv.manifest.get("dataset"),
                     "synthetic": synthetic, "split": split, "images": int(conv.split(split)["count"]),
                     "stored_square": square,
                     "res": res, "policy": policy.kind, "base": policy.base, "padding": max(1, policy.base // 8),
                     "batch_size": batch_size, "workers": workers, "epochs": epochs, "warmup_epochs": warmup_epochs,
                     "order": "round-robin", "augment": augment_info,
                     "baseline_random_erasing": bool(cfg is not None and cfg.erasing_p > 0),
                     "baseline_transforms": repr(transform)},
        "rows": rows,
        "memory_vs_dataloader": ratio,
        "memory_vs_dataloader_median_epoch": median_ratio,
        "goal": {"memory_vs_dataloader": GOAL, "met": bool(ratio is not None and ratio >= GOAL)},
        "notes": notes,
    }
    return publish_result(result, format_result(result), out_json)


def format_result(result: dict) -> str:
    from fastkd.tables import format_table

    s, m = result["settings"], result["machine"]
    head = (f"{s['dataset']}/{s['split']} ({s['images']} images{', synthetic' if s['synthetic'] else ''}) "
            f"res {s['res']} ({s['policy']}), batch {s['batch_size']}, workers {s['workers']}, "
            f"{s['epochs']} timed epochs, device {m['device_name']}, {m['cpu_count']} CPUs, "
            f"torch threads {m['torch_threads']}")
    rows = []
    for row in result["rows"].values():
        if row["status"] != "ok":
            rows.append([row["loader"], row["status"], None, None, None, None])
            continue
        rows.append([row["loader"], round(row["images_per_s"], 1), f"{row['ratio']:.2f}x",
                     round(row["build_s"], 2), round(row["first_epoch_s"], 2), round(row["median_images_per_s"], 1)])
    text = format_table(["loader", "images/s", "vs DataLoader", "build s", "first epoch s", "median epoch img/s"], rows)
    ratio = result["memory_vs_dataloader"]
    median = result.get("memory_vs_dataloader_median_epoch")
    tail = (f"memory / DataLoader: {ratio:.1f}x (goal >= {result['goal']['memory_vs_dataloader']:.0f}x: "
            f"{'met' if result['goal']['met'] else 'not met'}); median epochs: {median:.1f}x" if ratio and median
            else "memory / DataLoader: -")
    return "\n".join([head, text, tail] + [f"note: {n}" for n in result["notes"]])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a converted folder (default: a synthetic 32x32 set in a temp folder)")
    p.add_argument("--images", type=int, default=5000, help="size of the synthetic set (without --data)")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--res", type=int, default=None, help="default: 32 for the synthetic set, else the dataset's")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--augment", help="erasing,cutout,mixup,cutmix (papers' settings) or a JSON AugmentConfig")
    p.add_argument("--seed", type=int, default=0)
    return bench_script_main(p, argv, DEFAULT_OUT, partial(_run, argv=argv))


def _run(args, argv=None) -> None:
    with tempfile.TemporaryDirectory(prefix="fastkd-synthetic-") as tmp:
        data, synthetic, res = args.data, None, args.res
        if data is None:
            from fastkd.converters.convert import ConvertOptions, convert

            t0 = time.perf_counter()
            make_synthetic(os.path.join(tmp, "images"), args.images)
            data = os.path.join(tmp, "data")
            convert("imagefolder", os.path.join(tmp, "images"), data,
                    ConvertOptions(storage="raw", formats=("dali",), progress=False))
            synthetic = {"images": args.images, "side": 32, "classes": 10, "storage": "raw (png)"}
            res = res or 32
            if not args.quiet:
                print(f"synthetic set: {args.images} images at 32x32, built and converted in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        else:
            from fastkd.pipelines import open_converted

            res = res or open_converted(data).default_res
        run_augment_bench(data, split=args.split, batch_size=args.batch_size, workers=args.workers, res=res,
                          epochs=args.epochs, warmup_epochs=args.warmup_epochs, device=args.device,
                          augment=args.augment, seed=args.seed, out_json=args.out,
                          progress=not args.quiet, synthetic=synthetic,
                          command=shlex.join(["python", "benchmarks/bench_augment.py",
                                              *(sys.argv[1:] if argv is None else argv)]))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
