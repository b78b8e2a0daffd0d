"""The teacher tax and the teacher cache on one pair and one dataset (``fastkd bench kd``;
``benchmarks/bench_kd_step.py`` runs it on fixed pairs): training throughput of a student alone, with KD, and with
KD from a teacher-output cache, in one run on one machine, plus what the cache would take on disk and save in time
over the user's real run.

Rows, each a full ``fastkd train`` (lr 0.05, the torch backend, crop + flip views, one evaluation at the end):

- ``student``: ``--method ce``, the student alone (fastkd's defaults, channels-last included);
- ``student_nchw``: the same with ``--no-channels-last`` (the memory format the plain loop uses);
- ``kd_online``: ``--method kd`` with the teacher run every step;
- ``kd_fill``: the same with ``--teacher-cache`` on an empty folder (the fused loop writes the cache, float16);
- ``kd_cached``: the same again, reading the cache (the teacher is never loaded);
- ``plain``: a hand-written PyTorch loop training the same student on the same stored images (torchvision
  ``ImageFolder`` + ``DataLoader`` with per-sample equivalent transforms, SGD, cross-entropy).

Rate of a row: the median over its epochs after the first (warm-up) of the epoch's training images/s
(``train_images_per_s`` of ``metrics.jsonl``; the same definition for ``plain``). Ratios: ``cached_vs_student``
(kd_cached / student), ``online_vs_student``, ``fill_vs_online``, ``student_vs_plain``, ``student_nchw_vs_plain``.

Storage: bytes one training view takes in a KD cache (the teacher's logits with their CRC-32, view fingerprint and
written flag: ``fastkd.cache.store.row_bytes``) as float32, float16 and top-k (``cache_topk`` largest logits, their
indices and the rest's log-sum-exp; all logits when k >= the class count, as ``fastkd train`` does), and the cache's
size for a run of E epochs (``epochs_planned``, default the benchmark's ``epochs``): per-view bytes x N x E, N the
training split's size (a cache holds one row per image and epoch, each epoch's views being new).

Projection for a run of E epochs over N images, rates in images/s (``hours``):
``online_h`` = E N / kd_online / 3600, ``fill_h`` = E N / kd_fill / 3600, ``cached_h`` = E N / kd_cached / 3600;
``saved_per_cached_run_h`` = online_h - cached_h = E N (1/kd_online - 1/kd_cached) / 3600: what each run that
reads a full cache saves over online KD; ``fill_overhead_h`` = fill_h - online_h: the one-time extra of the run
that fills the cache as it trains (the cache is not filled in a first epoch: each epoch's views are new, so the
filling run runs the teacher in all its E epochs and writes every epoch's rows; a negative value is noise);
``saved_fill_plus_one_h`` = 2 online_h - fill_h - cached_h = saved_per_cached_run_h - fill_overhead_h: the filling
run and one reuse against two online runs. N counts every training image (a dropped last partial batch included).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Optional

import torch

from fastkd.atomic import atomic_write_json
from fastkd.errors import UserError
from fastkd.log import log
from fastkd.sizes import format_bytes
from fastkd.tables import format_table

from .machine import machine_info

ROWS = ("student", "student_nchw", "kd_online", "kd_fill", "kd_cached")
RATIOS = {"cached_vs_student": ("kd_cached", "student"), "online_vs_student": ("kd_online", "student"),
          "fill_vs_online": ("kd_fill", "kd_online"), "student_vs_plain": ("student", "plain"),
          "student_nchw_vs_plain": ("student_nchw", "plain")}
CACHE_DTYPES = ("float32", "float16")
HOURS = ("online_h", "fill_h", "cached_h", "saved_per_cached_run_h", "fill_overhead_h", "saved_fill_plus_one_h")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; give auto, cpu or cuda") from None


def median_rate(run_dir: str) -> float:
    """Median ``train_images_per_s`` of a run's epochs after the first (the only one when it ran one)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return statistics.median([r["train_images_per_s"] for r in rows[1:]] or [rows[0]["train_images_per_s"]])


def plain_loop(data, student: str, res: int, epochs: int, batch_size: int, workers: int, device, tmp: str) -> float:
    """Student-only training the way a PyTorch user writes it; median training images/s after epoch 1."""
    from torchvision.datasets import ImageFolder

    from fastkd.bench.loader import baseline_transform, extract_imagefolder
    from fastkd.models import create_model
    from fastkd.pipelines import Loader

    folder = os.path.join(tmp, "imagefolder")
    if not os.path.isdir(folder):
        extract_imagefolder(data, "train", folder)
    policy = Loader(data, "train", batch_size=batch_size, res=res, workers=0).policy
    ds = ImageFolder(folder, transform=baseline_transform(policy, data.mean, data.std))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                     persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = create_model(student, data.num_classes, policy.kind == "pad_crop", res=res).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        model.train()
        seen, start = 0, time.time()
        for x, y in dl:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(seen / (time.time() - start))
    return statistics.median(rates[1:] or rates)


def check_pair(teacher: str, student: str, weights: Optional[str], num_classes: int, low_res: bool, res: int,
               tmp: str) -> str:
    """Build both networks as ``fastkd train`` does and run one image through each (a one-line UserError for an
    unknown name, weights that do not fit, or a network that cannot take ``res`` px); the teacher's weights file
    (without ``weights``: a random-init teacher saved to ``tmp``)."""
    from fastkd.models import canonical_name, create_model
    from fastkd.train.weights import build_teacher

    for what, name in (("teacher", teacher), ("student", student)):
        try:
            canonical_name(name)
        except UserError as exc:
            raise UserError(f"--{what} {name}: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if weights is None:
            weights = os.path.join(tmp, f"{teacher.replace(':', '-')}-{res}-random.pt")
            torch.save(create_model(teacher, num_classes, low_res, res=res).state_dict(), weights)
        nets = {"teacher": build_teacher(teacher, weights, num_classes, low_res, res=res),
                "student": create_model(student, num_classes, low_res, res=res)}
    for what, net in nets.items():
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, 3, res, res))
        except (RuntimeError, ValueError, AssertionError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the {what} {getattr(net, 'fastkd_name', '')} cannot take {res} px images ({first}); "
                            "choose another --res or model") from None
    return weights


def logits_storage(num_classes: int, topk: int) -> dict:
    """Bytes per view of a KD cache (the teacher's logits) for each storage: the cache's own arithmetic."""
    from fastkd.cache.store import row_bytes, stored_spec

    k = topk if 0 < topk < num_classes else 0  # as fastkd train: k >= the class count keeps every logit
    storages = {dtype: {"dtype": dtype, "topk": 0} for dtype in CACHE_DTYPES}
    storages[f"top{topk}"] = {"dtype": "float16", "topk": k}
    return {name: {**s, "bytes_per_view": row_bytes(stored_spec("logits", {"shape": [num_classes]}, s))}
            for name, s in storages.items()}


def projection(n_train: int, epochs: int, rates: dict) -> dict:
    """The hours of a run of ``epochs`` epochs over ``n_train`` images (module docstring)."""
    online, fill, cached = (epochs * n_train / rates[k] / 3600 for k in ("kd_online", "kd_fill", "kd_cached"))
    return {"online_h": online, "fill_h": fill, "cached_h": cached, "saved_per_cached_run_h": online - cached,
            "fill_overhead_h": fill - online, "saved_fill_plus_one_h": 2 * online - fill - cached}


def measured_cache(root: str) -> dict:
    """What the filled cache holds: its storage, bytes per view (``row_bytes`` of its signals), views (images x
    epochs: the rows its files hold), rows written per signal over all epochs (the images trained on: a dropped last
    partial batch is not written), and its bytes on disk."""
    from fastkd.cache.info import cache_info
    from fastkd.cache.store import row_bytes

    info = cache_info(root)
    return {"storage": info["storage"], "bytes_per_view": sum(row_bytes(s) for s in info["signals"].values()),
            "views": info["count"] * info["epochs"], "bytes_on_disk": info["bytes"],
            "rows_written": {n: sum(e[n] for e in info["rows_written"]) for n in info["signals"]}}


def run_kd_bench(data_dir: str, teacher: str, student: str, res: Optional[int] = None, *,
                 teacher_weights: Optional[str] = None, epochs: int = 3, batch_size: int = 32, workers: int = 2,
                 device: str = "cpu", cache_topk: int = 10, epochs_planned: Optional[int] = None,
                 work: Optional[str] = None) -> dict:
    """Every row on ``teacher -> student`` at ``res`` px (default: the data's) over ``data_dir``'s train split;
    run folders, the cache and the plain loop's images go to ``work`` (default: a temporary folder, removed)."""
    from fastkd.pipelines import open_converted
    from fastkd.pipelines.view_policy import ViewPolicy
    from fastkd.train.config import TrainConfig
    from fastkd.train.trainer import train

    if min(epochs, batch_size, cache_topk, 1 if epochs_planned is None else epochs_planned) < 1 or workers < 0:
        raise UserError("--epochs, --batch-size, --cache-topk and --epochs-planned must be >= 1, --workers >= 0")
    data = open_converted(data_dir)
    res = int(res or data.default_res)
    n_train, planned = int(data.split("train")["count"]), int(epochs_planned or epochs)
    if batch_size > n_train:
        raise UserError(f"--batch-size {batch_size} exceeds the {n_train} training images of {data_dir}; lower it")
    dev = resolve_device(device)
    low_res = ViewPolicy.for_resolution(res, True).kind == "pad_crop"
    tag = f"{teacher}-{student}-{res}".replace(":", "-")
    own = work is None
    work = work or tempfile.mkdtemp(prefix="fastkd-bench-kd-")
    try:
        weights = check_pair(teacher, student, teacher_weights, data.num_classes, low_res, res, work)
        evaluate = next((s for s in ("test", "val") if s in data.splits()), "train")
        base = TrainConfig(data=data_dir, out="", student=student, epochs=epochs, batch_size=batch_size, lr=0.05,
                           res=res, workers=workers, device=str(dev), eval_every=10**6, eval_split=evaluate,
                           progress=False)
        kd = dict(method="kd", teacher=teacher, teacher_weights=weights)
        cache = os.path.join(work, f"cache-{tag}")
        shutil.rmtree(cache, ignore_errors=True)
        runs = {"student": {}, "student_nchw": {"channels_last": False}, "kd_online": kd,
                "kd_fill": {**kd, "teacher_cache": cache}, "kd_cached": {**kd, "teacher_cache": cache}}
        rates = {}
        for i, (name, extra) in enumerate(runs.items(), 1):
            out = os.path.join(work, f"{tag}-{name}")
            shutil.rmtree(out, ignore_errors=True)
            log(f"[{tag}] {i}/{len(runs) + 1} {name}: {epochs} epochs of {n_train} images")
            train(TrainConfig(**{**base.to_dict(), "out": out, **extra}))
            rates[name] = median_rate(out)
            log(f"[{tag}] {name}: {rates[name]:.1f} img/s")
        measured = measured_cache(cache)
        log(f"[{tag}] {len(runs) + 1}/{len(runs) + 1} plain PyTorch loop")
        rates["plain"] = plain_loop(data, student, res, epochs, batch_size, workers, dev, work)
        log(f"[{tag}] plain: {rates['plain']:.1f} img/s")
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    storage = logits_storage(data.num_classes, cache_topk)
    for s in storage.values():
        s["total_bytes"] = s["bytes_per_view"] * n_train * planned
    return {"pair": tag, "teacher": teacher, "student": student, "res": res, "data": os.path.abspath(data_dir),
            "num_classes": data.num_classes, "n_train": n_train, "epochs": epochs, "epochs_planned": planned,
            "teacher_weights": teacher_weights, "random_teacher": teacher_weights is None,
            "images_per_s": {k: round(v, 2) for k, v in rates.items()},
            **{name: round(rates[a] / rates[b], 3) for name, (a, b) in RATIOS.items()},
            "storage": storage, "cache_measured": measured, "hours": projection(n_train, planned, rates)}


def _duration(hours: float) -> str:
    return f"{hours:,.2f} h" if abs(hours) >= 0.1 else f"{hours * 3600:,.1f} s"


def _stored(name: str, storage: dict, classes: int) -> str:
    if storage["topk"]:
        return f"{storage['dtype']} top-{storage['topk']}"
    return storage["dtype"] + (f" (k >= {classes} classes: all logits)" if name.startswith("top") else "")


def _label(r: dict) -> str:
    return f"{r['teacher']} -> {r['student']}, {r['res']} px"


def format_rates(results) -> str:
    headers = ["pair", "(a) student img/s", "(a') NCHW", "(b) KD online", "(c) KD filling", "(d) KD cached",
               "plain loop", "(d)/(a)", "(b)/(a)", "(c)/(b)", "(a)/plain", "(a')/plain"]
    body = [[_label(r), *(r["images_per_s"][k] for k in (*ROWS, "plain")), *(r[k] for k in RATIOS)] for r in results]
    return format_table(headers, body, markdown=True)


def format_report(results) -> str:
    """The rates table, then per pair its storage and projection tables and their footnotes."""
    parts = [format_rates(results)]
    for r in results:
        e, n, h = r["epochs_planned"], r["n_train"], r["hours"]
        teacher = ("a random-init teacher (no --teacher-weights; a trained one runs at the same speed)"
                   if r["random_teacher"] else f"the teacher's weights {r['teacher_weights']}")
        rate = (f"median img/s of epochs 2-{r['epochs']} (epoch 1: warm-up)" if r["epochs"] > 1
                else "img/s of the one epoch (no warm-up left out: use --epochs 3)")
        parts.append(f"{_label(r)}: {teacher}; rate = {rate}.")
        rows = [[name, _stored(name, s, r["num_classes"]), s["bytes_per_view"], format_bytes(s["total_bytes"])]
                for name, s in r["storage"].items()]
        parts.append(format_table(["storage", "stored", "bytes per view", f"cache for {e} epochs x {n:,} images"], rows,
                                  markdown=True))
        parts.append(format_table(["online KD", "filling run", "cached run", "saved per cached run", "fill overhead",
                                   "saved: fill + 1 reuse"], [[_duration(h[k]) for k in HOURS]], markdown=True))
        parts.append("\n".join([
            f"Projected for E = {e} epochs (--epochs-planned) x N = {n:,} training images: run time = E N / rate; "
            "saved per cached run = E N (1/online - 1/cached); fill overhead = filling run - online run, paid once "
            "(the run that fills the cache runs the teacher in every epoch); saved: fill + 1 reuse = saved per cached "
            "run - fill overhead.",
            "Bytes per view: the teacher's logits and each row's CRC-32, view fingerprint and written flag; top-k: the "
            "k largest logits, their class indices and the rest's log-sum-exp."]))
    return "\n\n".join(parts)


def save_results(path: str, results, settings: dict, device: str) -> dict:
    """The results with the machine's description and the report, written atomically to ``path``."""
    doc = {"machine": machine_info(resolve_device(device)), "settings": settings, "rows": results,
           "table": format_report(results)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, doc)
    return doc
