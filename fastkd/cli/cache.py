"""``fastkd cache build`` and ``fastkd cache info``: the teacher-output cache (fastkd/cache)."""
from __future__ import annotations

import json

import click

from . import cli
from .options import RegistryOption, memory_limit_option
from .train import parse_method_options


@cli.group()
def cache():
    """Teacher-output caches: fill one ahead of training, or describe one."""


@cache.command()
@click.option("--teacher-weights", required=True, help="Teacher weights: fastkd checkpoint or torchvision state dict.")
@click.option("--teacher", default=None, help="Teacher architecture (read from a fastkd checkpoint if omitted).")
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--epochs", type=click.IntRange(1), required=True, help="Epochs of views to fill (the training run's).")
@click.option("--out", required=True, help="Cache folder (pass it to `fastkd train --teacher-cache`).")
@click.option("--method", default="kd", show_default=True, help="Methods whose signals to store, e.g. kd+at.")
@click.option("--opt", "opts", multiple=True, metavar="METHOD.NAME=VALUE", help="Method options that choose taps.")
@click.option("--res", type=int, default=None, help="Training resolution (default: the dataset's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-augment", "views", flag_value=False, default=True, help="Centre views (no crop/flip).")
@click.option("--erasing", type=float, default=0.0, show_default=True)
@click.option("--cutout", type=float, default=0.0, show_default=True)
@click.option("--mixup", type=float, default=0.0, show_default=True)
@click.option("--cutmix", type=float, default=0.0, show_default=True)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True)
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="The training run's memory format (part of the key).")
@click.option("--cache-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--cache-topk", type=click.IntRange(0), default=0, show_default=True)
@click.option("--cache-budget", type=float, default=1e9, show_default=True)
@click.option("--backend", default="torch", show_default=True, cls=RegistryOption, registry="fastkd.pipelines:BACKENDS",
              help="Pipeline backend (the training run's).")
@memory_limit_option()
@click.option("--batch-size", type=click.IntRange(2), default=256, show_default=True, help="Teacher batch (even).")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--train-split", default="train", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(out, opts, batch_size, quiet, **kw):
    """Fill a teacher cache with no student (teacher in eval mode, large batches)."""
    from fastkd.cache.build import build_cache
    from fastkd.cache.info import format_info
    from fastkd.pipelines import BACKENDS
    from fastkd.train.config import TrainConfig

    BACKENDS.canonical(kw["backend"])
    cfg = TrainConfig(**kw, out="", student=kw["teacher"] or "", teacher_cache=out,
                      method_options=parse_method_options(opts), progress=not quiet)
    info = build_cache(cfg, batch_size=batch_size + batch_size % 2, progress=not quiet)
    if info is not None:  # rank 0 of a torchrun job reports for all
        click.echo(format_info(info))


@cache.command()
@click.argument("folder")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(folder, as_json):
    """Print a cache's key, signals, epochs filled and bytes."""
    from fastkd.cache.info import cache_info, format_info

    result = cache_info(folder)
    click.echo(json.dumps(result, indent=2) if as_json else format_info(result))
