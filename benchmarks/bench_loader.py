"""Loader throughput: fastkd's backends against a plain torchvision DataLoader and a decode-only row.

    python benchmarks/bench_loader.py --data /tmp/orl --res 32 64
    python benchmarks/bench_loader.py --res 224 112  # 1,000 generated 360-640 px photos (--photos N), converted
    python benchmarks/bench_loader.py --res 224 112 --backends torch memory --views-per-image 1 2 4

One JSON per resolution: --out (default benchmarks/results/loader.json), with ``_r<res>`` before
``.json`` when several resolutions are given. Same as ``fastkd bench loader``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from fastkd.bench.loader import REFERENCES, bench_script_main, run_loader_bench

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "loader.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a converted folder (default: generate --photos photos and convert them)")
    p.add_argument("--photos", type=int, default=1000, help="size of the generated photo set (without --data)")
    p.add_argument("--backends", nargs="+", default=["ffcv", "dali", "torch", "memory"])
    p.add_argument("--references", nargs="*", default=list(REFERENCES),
                   help="FFCV's and DALI's own pipelines to time beside (RandomResizedCrop resolutions only)")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--res", type=int, nargs="+", default=[None], help="one or more resolutions (default: the dataset's)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--views-per-image", type=int, nargs="+", default=[1],
                   help="time each backend with K views cut from each decoded image, for each K (e.g. 1 2 4)")
    p.add_argument("--device", default="cpu")
    return bench_script_main(p, argv, DEFAULT_OUT, _run)


def _run(args) -> None:
    with tempfile.TemporaryDirectory(prefix="fastkd-photos-") as tmp:
        data = args.data
        if data is None:
            from fastkd.bench.photos import converted_photo_set

            data = converted_photo_set(tmp, args.photos, progress=not args.quiet)
        for res in args.res:
            out = args.out if len(args.res) == 1 else f"{os.path.splitext(args.out)[0]}_r{res}.json"
            run_loader_bench(data, backends=tuple(args.backends), split=args.split, batch_size=args.batch_size,
                             workers=args.workers, res=res, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                             device=args.device, out_json=out, progress=not args.quiet,
                             references=tuple(args.references), views_per_image=tuple(args.views_per_image))
            print(f"wrote {out}\n")


if __name__ == "__main__":
    sys.exit(main())
