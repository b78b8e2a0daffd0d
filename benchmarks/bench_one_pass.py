"""One pass over the data for a grid row vs its cells one after another (issue 24; fastkd/bench/one_pass.py has
the protocol), on generated photos at 112 px (torch backend) and on the embedded ORL faces at 32 px.

    python benchmarks/bench_one_pass.py                               # both sets, 4 cells, 3 epochs
    python benchmarks/bench_one_pass.py --sets photos --photos 1280 --device cuda --res 224

Prints the table and writes JSON (``results/one_pass.json``, ``--out``). Compare ratios within one run only:
absolute times on a shared machine drift.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from fastkd.bench.one_pass import METHODS, random_teacher, run_set, save, table
from fastkd.malloc import keep_freed_memory

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "one_pass.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["photos", "faces"], choices=["photos", "faces"])
    ap.add_argument("--photos", type=int, default=640, help="Generated photos (10 classes, longer side 360-640).")
    ap.add_argument("--res", type=int, default=112, help="Training side on the photos (the faces train at 32).")
    ap.add_argument("--methods", default=",".join(METHODS), help="Comma list: one cell per method.")
    ap.add_argument("--student", default="shufflenet_v2_x0_5")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per cell; the first is warm-up.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    methods = [m for m in args.methods.split(",") if m]
    common = dict(student=args.student, methods=methods, epochs=args.epochs, batch_size=args.batch_size,
                  workers=args.workers, device=args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_one_pass-") as tmp:
        for name in args.sets:
            if name == "photos":
                from fastkd.bench.photos import converted_photo_set

                data = converted_photo_set(tmp, args.photos, progress=False, val_fraction=0.1)
                teacher = random_teacher("ResNet18", 10, False, args.res, os.path.join(tmp, "teacher-photos.pt"))
                rows.append(run_set(name, data, "ResNet18", teacher, args.res, tmp, **common))
            else:
                from fastkd.converters.convert import ConvertOptions, convert

                data = os.path.join(tmp, "faces")
                convert("orl_faces", None, data, ConvertOptions(progress=False))
                teacher = random_teacher("resnet32", 40, True, 32, os.path.join(tmp, "teacher-faces.pt"))
                rows.append(run_set(name, data, "resnet32", teacher, 32, tmp, **common))
            print(table(rows), flush=True)
    save(args.out, rows, vars(args), args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
