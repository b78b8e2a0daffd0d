"""GPU decoding paths vs the CPU path on generated photos, then loader and training throughput.

``python -m fastkd.bench.gpu_check [--cpu]`` (run by ``benchmarks/gpu_check.sh``). On a CUDA machine it
builds, on ``cuda``, the torch backend (batches decoded by nvJPEG, ``torchvision.io.decode_jpeg``, views cut
on the device), DALI (``device="mixed"``), FFCV and the memory backend, and checks that every sample's
view (train and eval) equals the CPU torch backend's (PIL) within a few grey levels; then prints
``fastkd bench loader`` on the device, `fastkd train` images/s, and a grid row of 4 cells in one pass vs one
after another (``benchmarks/bench_one_pass.py``'s photo row), and every method's step cost against the student
alone (``fastkd bench methods``). ``--cpu`` runs the same code where no
GPU is: the torch backend's device path with torchvision's CPU decoder, DALI's CPU pipeline and the
memory backend, on the CPU (what the tests run). Exit status 1 when a path disagrees.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from fastkd.log import log

MEAN_TOL, P99_TOL = 4.0, 32.0  # grey levels between two paths (each is within ~2.8 / 20 of a float reference)


def _views(data: str, backend: str, device: str, train: bool, on_device=None) -> tuple:
    """Un-normalised, unflipped views (N, 3, res, res) in grey levels, and their indices, of one batch."""
    from fastkd.pipelines import Loader
    from fastkd.pipelines.torch_backend import TorchBackend

    old, TorchBackend.on_device = TorchBackend.on_device, on_device
    try:
        loader = Loader(data, "train", backend=backend, batch_size=16, res=112, seed=1, workers=2, device=device,
                        train=train)
        batch = next(iter(loader.epoch(1)))
    finally:
        TorchBackend.on_device = old
    x = (batch.images * loader._std + loader._mean).cpu()
    flip = batch.view.flip.cpu()
    return torch.where(flip[:, None, None, None], x.flip(3), x), batch.index.cpu()


def compare(data: str, device: str, paths) -> bool:
    """Every path's views against the CPU torch backend's; prints one line per path and mode."""
    ok = True
    for train in (True, False):
        ref, ref_idx = _views(data, "torch", "cpu", train)
        for name, backend, on_device in paths:
            try:
                got, idx = _views(data, backend, device, train, on_device)
            except Exception as exc:  # a missing package: reported, not a disagreement
                print(f"{name:<28} {'train' if train else 'eval':<6} skipped: {type(exc).__name__}: {exc}")
                continue
            assert torch.equal(idx, ref_idx), "backends disagree on the epoch order"
            err = (got - ref).abs()
            mean, p99 = float(err.mean()), float(torch.quantile(err.flatten()[::7], 0.99))
            good = mean < MEAN_TOL and p99 < P99_TOL
            ok &= good
            print(f"{name:<28} {'train' if train else 'eval':<6} mean |diff| {mean:5.2f}  p99 {p99:5.1f} grey levels"
                  f"  {'ok' if good else 'DIFFERENT'}")
    return ok


def one_pass_row(data: str, device: str, cpu: bool, tmp: str, out: str) -> None:
    """benchmarks/bench_one_pass.py's photo row: kd, at, rkd, pkt into shufflenet_v2_x0_5 at 112 px, one pass vs
    one after another (target on a GPU: <= 0.5x); with --cpu two cells on a few batches."""
    from fastkd.bench.one_pass import METHODS, random_teacher, run_set, save, table

    teacher = random_teacher("ResNet18", 10, False, 112, os.path.join(tmp, "teacher-one-pass.pt"))
    row = run_set("photos", data, "ResNet18", teacher, 112, tmp, methods=METHODS[:2] if cpu else METHODS,
                  epochs=2 if cpu else 3, batch_size=8 if cpu else 256, workers=2 if cpu else 8, device=device)
    print(table([row]))
    print(f"one pass ({row['cells']} cells, {device}): {row['ratio']:.2f}x the cells one after another")
    save(os.path.join(out, "gpu_check_one_pass.json"), [row], {"cpu": cpu}, device)


def methods_costs(device: str, cpu: bool, out: str) -> None:
    """``fastkd bench methods``: every method's step against the student alone, ResNet50 -> mobilenet_v2 at 224 px
    on a GPU; with --cpu kd and rkd, resnet32 -> shufflenet_v2_x0_5 at 16 px."""
    from fastkd.bench.methods import run_methods_bench, save
    from fastkd.methods import list_methods

    pair, names = (("resnet32", "shufflenet_v2_x0_5"), ["kd", "rkd"]) if cpu else (("ResNet50", "mobilenet_v2"),
                                                                                   list_methods())
    rows = run_methods_bench(*pair, names, res=16 if cpu else 224, batch_size=8 if cpu else 64, classes=100,
                             steps=2 if cpu else 10, warmup=0 if cpu else 3, device=device, progress=False)
    print(save(os.path.join(out, "gpu_check_methods.json"), rows, {"cpu": cpu, "pair": pair}, device)["table"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the same checks with the CPU equivalents (no GPU needed)")
    p.add_argument("--photos", type=int, default=None, help="generated photos (default: 64 with --cpu, 2,000 on a GPU)")
    p.add_argument("--out", default=None, help="folder for the JSON results (default: a temporary one)")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        log("gpu_check: no CUDA device here; run with --cpu for the CPU part")
        return 2
    device = "cpu" if args.cpu else "cuda"
    from fastkd.bench.loader import run_loader_bench
    from fastkd.bench.photos import converted_photo_set

    with tempfile.TemporaryDirectory(prefix="fastkd-gpu-check-") as tmp:
        out = args.out or tmp
        data = converted_photo_set(tmp, args.photos or (40 if args.cpu else 2000), progress=False, val_fraction=0.2)
        paths = [("torch, decode_jpeg on " + device, "torch", True),
                 ("dali " + ("cpu" if args.cpu else "mixed"), "dali", None),
                 ("memory on " + device, "memory", None)] + ([] if args.cpu else [("ffcv to cuda", "ffcv", None)])
        ok = compare(data, device, paths)
        backends = ("torch", "memory") if args.cpu else ("torch", "dali", "ffcv", "memory")
        run_loader_bench(data, backends=backends, batch_size=16 if args.cpu else 256, workers=2 if args.cpu else 8,
                         res=112 if args.cpu else 224, epochs=1 if args.cpu else 3, warmup_epochs=0 if args.cpu else 1,
                         device=device, out_json=os.path.join(out, "gpu_check_loader.json"), progress=False)
        run = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "fastkd", "train", "--data", data, "--out", run, "--device", device, "--quiet",
               "--model", "shufflenet_v2_x0_5" if args.cpu else "resnet50", "--epochs", "1",
               "--batch-size", "16" if args.cpu else "256", "--res", "96" if args.cpu else "224",
               "--workers", "2" if args.cpu else "8", "--backend", "torch"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"training failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
            return 1
        summary = json.loads(result.stdout)
        print(f"training ({cmd[cmd.index('--model') + 1]}, torch backend, {device}): "
              f"{summary['train_images_per_s']:.0f} img/s")
        one_pass_row(data, device, args.cpu, tmp, out)
        methods_costs(device, args.cpu, out)
    print("gpu_check: " + ("all paths agree" if ok else "SOME PATHS DISAGREE"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
