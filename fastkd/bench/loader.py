"""`fastkd bench loader`: images/s of each fastkd backend against a plain torchvision DataLoader.

A fastkd row times the full ``Loader.epoch`` (decode, augmentation on the device, normalisation). The
baseline reads the very same stored images, extracted to a temporary ImageFolder tree, with per-sample
torchvision transforms equivalent to fastkd's view policy (RandomResizedCrop on the whole image + flip
for res > 64). The "decode-only" row is the ceiling of any loader that decodes every pixel: a full PIL
decode of every file of that tree with the same number of DataLoader workers, nothing else; a loader
can beat it only by decoding less (DCT-scaled or cropped decoding). Every loader's output is consumed
(summed on the device) so that no work is skipped. With ``references``, FFCV's and DALI's own
RandomResizedCrop pipelines on the same stored JPEGs are timed too (``library_pipelines.py``; at
RandomResizedCrop resolutions only). Warm-up epochs (FFCV's numba compilation) are not timed, nor is
building a loader: the table shows it as "build s" (the memory backend decodes the whole split
once there, then cuts views from memory every epoch).
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from functools import partial
from typing import Callable, Dict, Optional, Sequence

import torch

from fastkd.log import log
from fastkd.atomic import atomic_write_json
from fastkd.bench import library_pipelines
from fastkd.bench.machine import machine_info
from fastkd.errors import UserError
from fastkd.malloc import keep_freed_memory

BASELINE = "dataloader"
DECODE_ONLY = "decode-only"
NAMES = {BASELINE: "torchvision DataLoader", DECODE_ONLY: "decode-only (PIL, full)", "ffcv": "fastkd ffcv",
         "dali": "fastkd dali", "torch": "fastkd torch", "memory": "fastkd memory", **library_pipelines.NAMES}
REFERENCES = tuple(library_pipelines.NAMES)  # "ffcv-own", "dali-own"


def consume(batches, device: torch.device) -> int:
    """Sum every image batch on ``device``; returns the number of images. Ends with a device sync."""
    n, acc = 0, torch.zeros((), device=device)
    for images in batches:
        acc += images.to(device, non_blocking=True).sum()
        n += images.shape[0]
    float(acc)  # waits for the device
    return n


def label(name: str) -> str:
    """The table's name of a row: ``fastkd torch``, or ``fastkd torch, K=4`` for row ``torch-k4`` (K views per
    decoded image)."""
    base, sep, k = name.rpartition("-k")
    if sep and k.isdigit() and base in NAMES:
        return f"{NAMES[base]}, K={k}"
    return NAMES.get(name, name)


def _failed(name: str, exc: BaseException) -> dict:
    skip = isinstance(exc, (UserError, ImportError))  # a missing package or converted format: skipped
    return {"loader": label(name), "status": f"skipped: {exc}" if skip else f"failed: {type(exc).__name__}: {exc}"}


def measure_round_robin(builders: Dict[str, Callable], warmup: int, epochs: int, progress: bool) -> Dict[str, dict]:
    """Builds every loader, then runs the epochs round-robin (epoch e of every loader, then e + 1) so
    that a change in machine speed (other jobs on a shared machine) hits every loader alike."""
    rows, live = {}, {}
    for name, build in builders.items():
        t0 = time.perf_counter()
        try:
            live[name] = build()  # (loader, run_epoch(loader, epoch) -> images consumed)
        except Exception as exc:  # a benchmark reports a broken loader and goes on with the others
            rows[name] = _failed(name, exc)
            continue
        rows[name] = {"loader": label(name), "status": "ok", "build_s": time.perf_counter() - t0,
                      "images": 0, "seconds": 0.0, "epoch_images_per_s": []}
    for e in range(warmup + epochs):
        for name, (obj, run_epoch) in list(live.items()):
            row, t0 = rows[name], time.perf_counter()
            try:
                n = run_epoch(obj, e)
            except Exception as exc:
                rows[name] = _failed(name, exc)
                del live[name]
                continue
            dt = time.perf_counter() - t0
            row.setdefault("first_epoch_s", dt)
            if e >= warmup:
                row["images"], row["seconds"] = row["images"] + n, row["seconds"] + dt
                row["epoch_images_per_s"].append(n / dt)
            if progress:
                log(f"  epoch {e}{' (warm-up)' if e < warmup else ''} {name}: {n} images, {dt:.3f} s")
    live.clear()
    gc.collect()  # shut worker processes / pipeline threads down
    for row in rows.values():
        if row["status"] == "ok":
            row["images_per_s"] = row["images"] / row["seconds"] if row["seconds"] > 0 else None
            row["median_images_per_s"] = statistics.median(row["epoch_images_per_s"])  # robust to noise
    return rows


def extract_imagefolder(data, split: str, root: str) -> None:
    """The split's stored bytes as ``root/<class>/<index>.<ext>`` (PIL decodes the same files)."""
    reader = data.shard_reader(split)
    ext = "jpg" if data.storage == "jpg" else "png"
    for name in data.classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(len(reader)):
        with open(os.path.join(root, data.classes[int(reader.table[i]["label"])], f"{i:08d}.{ext}"), "wb") as f:
            f.write(reader.payload(i))


def baseline_transform(policy, mean, std):
    """torchvision per-sample transforms equivalent to fastkd's ``ViewPolicy`` (train views)."""
    from torchvision import transforms as T

    s = policy.base
    if policy.kind == "pad_crop":
        view = [T.Resize(s), T.CenterCrop(s), T.RandomCrop(policy.out, padding=max(1, s // 8))]
    else:  # on the whole image, as fastkd's rrc policy
        view = [T.RandomResizedCrop(policy.out, scale=tuple(policy.scale), ratio=tuple(policy.ratio))]
    return T.Compose([*view, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


class _DecodeOnly:
    """Item i: the full decode of file i (PIL, RGB); returns its pixel count so the work is consumed."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return im.convert("RGB").size[0]


def run_loader_bench(data: str, backends: Sequence[str] = ("ffcv", "dali", "torch", "memory"), split: str = "train",
                     batch_size: int = 64, workers: int = 2, res: Optional[int] = None, epochs: int = 3,
                     warmup_epochs: int = 1, device="cpu", out_json: Optional[str] = None,
                     progress: bool = True, references: Sequence[str] = (), views_per_image: Sequence[int] = (1,)
                     ) -> dict:
    """``references``: FFCV's and DALI's own pipelines to time beside (:data:`REFERENCES`); ignored at
    pad-and-crop resolutions (res <= 64), where they have no counterpart. ``views_per_image``: each K times
    every backend with K views cut from each decoded image (rows ``<backend>-k<K>`` for K > 1; their rate counts
    views, the DataLoader's and decode-only's images)."""
    import torchvision

    from fastkd.pipelines import Loader, open_converted
    from fastkd.pipelines.view_policy import ViewPolicy

    if epochs < 1 or warmup_epochs < 0:
        raise UserError("--epochs must be at least 1 and --warmup-epochs at least 0")
    conv, dev = open_converted(data), torch.device(device)
    res = int(res or conv.default_res)
    policy = ViewPolicy.for_resolution(res, train=True)
    with tempfile.TemporaryDirectory(prefix="fastkd-bench-") as tmp:
        extract_imagefolder(conv, split, tmp)

        def build_baseline():
            ds = torchvision.datasets.ImageFolder(tmp, transform=baseline_transform(policy, conv.mean, conv.std))
            dl = torch.utils.data.DataLoader(
                ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                pin_memory=dev.type == "cuda", persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
            return dl, lambda dl, e: consume((x for x, _ in dl), dev)

        def build_decode_only():
            paths = sorted(os.path.join(d, f) for d, _, files in os.walk(tmp) for f in files)
            dl = torch.utils.data.DataLoader(
                _DecodeOnly(paths), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                collate_fn=torch.tensor, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
            return dl, lambda dl, e: consume(iter(dl), dev)

        def build_fastkd(backend, k=1):
            loader = Loader(conv, split, backend=backend, batch_size=batch_size, train=True, res=res,
                            workers=workers, device=dev, views_per_image=k)
            return loader, lambda ld, e: consume((b.images for b in ld.epoch(e)), dev)

        def build_reference(name):
            if name == library_pipelines.FFCV_OWN:
                obj, run_epoch = library_pipelines.ffcv_own(conv.path(conv.split(split)["ffcv"]), res, batch_size,
                                                            workers)
            else:
                obj, run_epoch = library_pipelines.dali_own(tmp, res, batch_size, workers)
            return obj, lambda o, e: consume(run_epoch(o, e), dev)

        references = tuple(references) if policy.kind == "rrc" else ()
        if progress:
            log(f"bench loader: res {res}, batch {batch_size}, workers {workers}")
        rows = measure_round_robin({BASELINE: build_baseline, DECODE_ONLY: build_decode_only,
                         **{b if k == 1 else f"{b}-k{k}": partial(build_fastkd, b, k)
                            for k in views_per_image for b in backends},
                         **{r: partial(build_reference, r) for r in references}}, warmup_epochs, epochs, progress)
    base, ceiling = rows[BASELINE].get("images_per_s"), rows[DECODE_ONLY].get("images_per_s")
    for row in rows.values():
        ips = row.get("images_per_s")
        row["ratio"] = ips / base if ips and base else None
        row["vs_decode_only"] = ips / ceiling if ips and ceiling else None
    result = {"machine": machine_info(dev),
              "settings": {"data": os.path.abspath(data), "dataset": conv.manifest.get("dataset"), "split": split,
                           "images": int(conv.split(split)["count"]), "res": res, "policy": policy.kind,
                           "base": policy.base, "batch_size": batch_size, "workers": workers, "epochs": epochs,
                           "warmup_epochs": warmup_epochs, "order": "round-robin", "backends": list(backends),
                           "views_per_image": list(views_per_image),
                           "references": list(references)},
              "rows": rows}
    return publish_result(result, format_table(result), out_json)


def publish_result(result: dict, table: str, out_json: Optional[str]) -> dict:
    """Prints ``table``, writes ``result`` atomically to ``out_json`` (when given) and returns it."""
    print(table)
    if out_json:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        atomic_write_json(out_json, result)
    return result


def bench_script_main(parser, argv, default_out: str, run: Callable) -> int:
    """``main(argv)`` of a benchmark script: adds ``--out`` (default ``default_out``), ``--torch-threads`` and
    ``--quiet`` to ``parser``, parses ``argv``, readies the process as the fastkd command does, then calls
    ``run(args)``. Returns the exit status: 0, or 2 after printing a UserError on stderr."""
    parser.add_argument("--out", default=default_out, help="JSON results path")
    parser.add_argument("--torch-threads", type=int,
                        help="torch.set_num_threads(N) first (intra-op threads of the main process)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        run(args)
    except UserError as exc:
        log(f"error: {exc}")
        return 2
    return 0


def format_table(result: dict) -> str:
    s = result["settings"]
    lines = [f"{s['dataset']}/{s['split']} res {s['res']} ({s['policy']}), batch {s['batch_size']}, "
             f"workers {s['workers']}, {s['epochs']} timed epochs, device {result['machine']['device_name']}",
             f"{'loader':<24}{'images/s':>10}{'vs DataLoader':>15}{'vs decode-only':>16}{'build s':>9}"
             f"{'first epoch s':>15}{'median epoch img/s':>20}"]
    for row in result["rows"].values():
        if row["status"] != "ok":
            lines.append(f"{row['loader']:<24}  {row['status']}")
            continue
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        ceiling = f"{row['vs_decode_only']:.2f}x" if row["vs_decode_only"] else "-"
        lines.append(f"{row['loader']:<24}{row['images_per_s']:>10.1f}{ratio:>15}{ceiling:>16}{row['build_s']:>9.2f}"
                     f"{row['first_epoch_s']:>15.2f}{row['median_images_per_s']:>20.1f}")
    return "\n".join(lines)
