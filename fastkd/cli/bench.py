"""``fastkd bench loader``: backend throughput against a plain torchvision DataLoader; ``fastkd bench kd``: the
teacher tax and the teacher cache on a pair and data of your own; ``fastkd bench methods``: each method's step cost
on a pair against the student alone."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli
from .options import RegistryOption, memory_limit_option


@cli.group()
def bench():
    """Throughput benchmarks (each prints a table and writes JSON)."""


@bench.command()
@click.option("--data", default=None, help="A folder written by `fastkd convert` (default: --photos generated photos).")
@click.option("--photos", type=click.IntRange(16), default=1000, show_default=True,
              help="Without --data: generate this many 360-640 px JPEG photos and convert them first.")
@click.option("--backends", default="ffcv,dali,torch,memory", show_default=True, cls=RegistryOption,
              registry="fastkd.pipelines:BACKENDS",
              help="Comma list of backends to time (memory: decodes the split once when built, its build s in the "
                   "table; skipped when the split does not fit its limit).")
@memory_limit_option()
@click.option("--references", default="ffcv-own,dali-own", show_default=True,
              help="FFCV's and DALI's own RandomResizedCrop pipelines to time beside fastkd's backends (res > 64; "
                   "empty: none).")
@click.option("--split", default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--res", type=int, default=None, help="Resolution (default: the dataset's).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Timed epochs.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=1, show_default=True)
@click.option("--views-per-image", "views_per_image", default="1", show_default=True, metavar="K[,K...]",
              help="Comma list: time each backend with K views cut from each decoded image (views/s); 1,2,4 "
                   "compares them in one run.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_json", default="benchmarks/results/loader.json", show_default=True, help="JSON output.")
def loader(data, photos, backends, references, split, batch_size, workers, res, epochs, warmup_epochs, views_per_image,
           device, out_json):
    """images/s of each backend vs ImageFolder + DataLoader on the same images and augmentation, and a
    decode-only row (full decode of every image, same workers)."""
    import tempfile

    from fastkd.bench.loader import REFERENCES, run_loader_bench
    from fastkd.bench.photos import converted_photo_set
    from fastkd.pipelines import BACKENDS, open_converted

    names = tuple(BACKENDS.canonical(b.strip()) for b in backends.split(",") if b.strip())
    refs = tuple(r.strip() for r in references.split(",") if r.strip())
    unknown = [r for r in refs if r not in REFERENCES]
    if unknown:
        raise UserError(f"unknown --references {', '.join(unknown)}; choose from {', '.join(REFERENCES)}")
    if not names:
        raise UserError("--backends is empty; give e.g. ffcv,dali,torch")
    ks = [v.strip() for v in views_per_image.split(",") if v.strip()]
    if not ks or not all(k.isdigit() and int(k) >= 1 and batch_size % int(k) == 0 for k in ks):
        raise UserError(f"--views-per-image {views_per_image!r}: give a comma list of integers >= 1 that divide "
                        f"--batch-size {batch_size}, e.g. 1,2,4")
    with tempfile.TemporaryDirectory(prefix="fastkd-photos-") as tmp:
        data = data or converted_photo_set(tmp, photos)
        open_converted(data)
        run_loader_bench(data, backends=names, split=split, batch_size=batch_size, workers=workers, res=res,
                         epochs=epochs, warmup_epochs=warmup_epochs, device=device, out_json=out_json,
                         references=refs, views_per_image=tuple(dict.fromkeys(int(k) for k in ks)))


@bench.command("kd")
@click.option("--teacher", required=True, help="Teacher architecture: any `fastkd list models` name, timm:NAME or "
              "torchvision:NAME.")
@click.option("--teacher-weights", default=None, help="The teacher's weights (any file that `fastkd train "
              "--teacher-weights` takes); default: a random-init teacher (the same speed), saved to a temporary file.")
@click.option("--student", required=True, help="Student architecture (as --teacher).")
@click.option("--data", default=None, help="A folder written by `fastkd convert`; every row trains on its train split.")
@click.option("--photos", type=click.IntRange(16), default=None,
              help="Instead of --data: generate this many 360-640 px JPEG photos (10 classes) and convert them first.")
@click.option("--res", type=click.IntRange(8), default=None, help="Resolution (default: the dataset's).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True,
              help="Epochs per row; the first is warm-up (rate: median of the others).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--cache-topk", type=click.IntRange(1), default=10, show_default=True,
              help="k of the top-k storage row (k >= the class count: all logits).")
@click.option("--epochs-planned", type=click.IntRange(1), default=None,
              help="Epochs of your real run, for the cache's size and the hours saved (default: --epochs; both grow "
                   "linearly with it).")
@click.option("--out", "out_json", default="benchmarks/results/kd_bench.json", show_default=True, help="JSON output.")
def kd(teacher, teacher_weights, student, data, photos, res, epochs, batch_size, workers, device, cache_topk,
       epochs_planned, out_json):
    """Student alone, online KD, cache filling and cached KD on your pair and data (images/s), with the cache's
    bytes per view (float32, float16, top-k), its size and the hours it saves over a run of --epochs-planned epochs.
    Run folders and the cache go to a temporary folder (TMPDIR)."""
    import tempfile

    from fastkd.bench.kd import run_kd_bench, save_results
    from fastkd.bench.photos import converted_photo_set

    if (data is None) == (photos is None):
        raise UserError("give --data DIR (a `fastkd convert` folder) or --photos N (generated photos), one of them")
    with tempfile.TemporaryDirectory(prefix="fastkd-bench-kd-") as tmp:
        data = data or converted_photo_set(tmp, photos, val_fraction=0.1)
        result = run_kd_bench(data, teacher, student, res, teacher_weights=teacher_weights, epochs=epochs,
                              batch_size=batch_size, workers=workers, device=device, cache_topk=cache_topk,
                              epochs_planned=epochs_planned, work=tmp)
    settings = dict(teacher=teacher, teacher_weights=teacher_weights, student=student, data=data if photos is None
                    else None, photos=photos, res=result["res"], epochs=epochs, batch_size=batch_size,
                    workers=workers, device=device, cache_topk=cache_topk, epochs_planned=result["epochs_planned"])
    doc = save_results(out_json, [result], settings, device)
    click.echo(doc["table"])
    click.echo(f"JSON: {out_json}", err=True)


@bench.command("methods")
@click.option("--teacher", required=True, help="Teacher architecture: any `fastkd list models` name, timm:NAME or "
              "torchvision:NAME (random-init: the speed is the same).")
@click.option("--student", required=True, help="Student architecture (as --teacher).")
@click.option("--methods", default=None, metavar="LIST", help="Comma list of methods (a sum as kd+at); default: "
              "every method of `fastkd list methods`.")
@click.option("--res", type=click.IntRange(8), default=224, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--classes", type=click.IntRange(2), default=100, show_default=True,
              help="Outputs of both networks (logit methods scale with it).")
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True, help="Timed steps (median).")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="Untimed first steps.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--opt", "method_options", multiple=True, metavar="METHOD.NAME=VALUE",
              help="A method's option instead of its default (repeatable), as `fastkd train --opt`.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--out", "out_json", default="benchmarks/results/methods_bench.json", show_default=True,
              help="JSON output.")
def methods(teacher, student, methods, res, batch_size, classes, steps, warmup, device, channels_last,
            method_options, quiet, out_json):
    """Each method's training step on TEACHER -> STUDENT against the student alone (ms/step, x ce), the teacher's
    signals given as a cache gives them: what a grid cell of each method costs."""
    from fastkd.bench.kd import resolve_device
    from fastkd.bench.methods import run_methods_bench, save
    from fastkd.methods import list_methods

    from .config_options import chosen_method_options

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else list_methods()
    options = chosen_method_options(method_options, names)  # each --opt names a benchmarked method and one option
    dev = str(resolve_device(device))
    rows = run_methods_bench(teacher, student, names, res=res, batch_size=batch_size, classes=classes, steps=steps,
                             warmup=warmup, device=dev, channels_last=channels_last, options=options,
                             progress=not quiet)
    doc = save(out_json, rows, dict(teacher=teacher, student=student, methods=names, res=res, batch_size=batch_size,
                                    classes=classes, steps=steps, warmup=warmup, device=dev,
                                    channels_last=channels_last, options=options), dev)
    click.echo(doc["table"])
    click.echo(f"JSON: {out_json}", err=True)
