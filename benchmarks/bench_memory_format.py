"""Training-step throughput of each model in NCHW and in channels-last (NHWC) memory format.

    python benchmarks/bench_memory_format.py                      # the default model/resolution list
    python benchmarks/bench_memory_format.py --cases mobilenet_v2:224 ResNet50:112 --steps 10

Per ``MODEL:RES``: one SGD step (forward, cross-entropy, backward, update) on a random batch (default 32,
100 classes), timed ``--steps`` times after 2 untimed ones, in each memory format; the rate is the median
step's images/s. Prints NHWC/NCHW per case (why ``fastkd train`` defaults to ``--channels-last``) and writes
JSON (``--out``, default ``results/memory_format.json``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from fastkd.atomic import atomic_write_json
from fastkd.bench.machine import machine_info
from fastkd.malloc import keep_freed_memory
from fastkd.models import create_model
from fastkd.tables import format_table

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory_format.json")
CASES = ["resnet32:32", "ResNet18:32", "ResNet18:112", "ResNet50:112", "shufflenet_v2_x1_0:32",
         "shufflenet_v2_x1_0:112", "squeezenet1_1:32", "squeezenet1_1:112", "mobilenet_v2:32", "mobilenet_v2:112",
         "mobilenet_v2:224"]


def step_rate(name: str, res: int, channels_last: bool, batch: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, 100, res <= 64).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[2:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=CASES, help="MODEL:RES entries")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per case and format")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the fastkd command does (fastkd/malloc.py)
    device = torch.device(args.device)
    rows = []
    for case in args.cases:
        name, res = case.split(":")
        nchw, nhwc = (step_rate(name, int(res), cl, args.batch_size, args.steps, device) for cl in (False, True))
        rows.append({"model": name, "res": int(res), "nchw_images_per_s": round(nchw, 1),
                     "channels_last_images_per_s": round(nhwc, 1), "ratio": round(nhwc / nchw, 2)})
        print(f"{name} {res}: NCHW {nchw:.1f} img/s, channels-last {nhwc:.1f} (x{nhwc / nchw:.2f})", file=sys.stderr,
              flush=True)
    table = format_table(["model", "res", "NCHW img/s", "channels-last img/s", "NHWC / NCHW"],
                         [[r["model"], r["res"], r["nchw_images_per_s"], r["channels_last_images_per_s"], r["ratio"]]
                          for r in rows], markdown=True)
    print(table)
    atomic_write_json(args.out, {"machine": machine_info(device), "settings": vars(args), "rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
