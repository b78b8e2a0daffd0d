"""``fastkd cache build`` and ``fastkd cache info``: the teacher-output cache (fastkd/cache)."""
from __future__ import annotations

import json

import click

from . import cli
from .config_options import config_options, config_values
from .options import memory_limit_option


@cli.group()
def cache():
    """Teacher-output caches: fill one ahead of training, or describe one."""


# the training run's options that decide what the cache holds (its key), from TrainConfig's declaration
CACHE_FIELDS = ("teacher_weights", "teacher", "data", "epochs", "teacher_cache", "method", "method_options", "res",
                "seed", "views", "views_per_image", "erasing", "cutout", "mixup", "cutmix", "amp", "channels_last",
                "cache_dtype", "cache_topk", "cache_budget", "backend", "batch_size", "workers", "train_split", "device",
                "progress")
CACHE_OVERRIDES = {
    "teacher_weights": {"required": True},
    "epochs": {"default": None, "required": True, "help": "Epochs of views to fill (the training run's)."},
    "teacher_cache": {"flag": "--out", "required": True,
                      "help": "Cache folder (pass it to `fastkd train --teacher-cache`)."},
    "method": {"default": "kd", "help": "Methods whose signals to store, e.g. kd+at."},
    "method_options": {"help": "Method options that choose taps."},
    "batch_size": {"default": 256, "min": 2, "help": "Teacher batch (even; the cache is addressed by sample, so "
                   "it need not be the training run's)."},
}


@cache.command()
@config_options(CACHE_FIELDS, CACHE_OVERRIDES)
@memory_limit_option()
def build(**kw):
    """Fill a teacher cache with no student (teacher in eval mode, large batches)."""
    from fastkd.cache.info import format_info
    from fastkd.pipelines import BACKENDS
    from fastkd.train.cache_fill import build_cache
    from fastkd.train.config import TrainConfig

    BACKENDS.canonical(kw["backend"])
    values = config_values(kw, CACHE_FIELDS)
    batch_size = values.pop("batch_size")
    cfg = TrainConfig(**values, out="", student=values.get("teacher") or "")
    info = build_cache(cfg, batch_size=batch_size + batch_size % 2, progress=cfg.progress)
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
