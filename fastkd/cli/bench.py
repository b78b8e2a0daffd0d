"""``fastkd bench loader``: backend throughput against a plain torchvision DataLoader."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli
from .options import RegistryOption


@cli.group()
def bench():
    """Throughput benchmarks (each prints a table and writes JSON)."""


@bench.command()
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--backends", default="ffcv,dali,torch", show_default=True, cls=RegistryOption,
              registry="fastkd.pipelines:BACKENDS", help="Comma list of backends to time.")
@click.option("--split", default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--res", type=int, default=None, help="Resolution (default: the dataset's).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Timed epochs.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_json", default="benchmarks/results/loader.json", show_default=True, help="JSON output.")
def loader(data, backends, split, batch_size, workers, res, epochs, warmup_epochs, device, out_json):
    """images/s of each backend vs ImageFolder + DataLoader on the same images and augmentation."""
    from fastkd.bench.loader import run_loader_bench
    from fastkd.pipelines import BACKENDS, open_converted

    names = tuple(BACKENDS.canonical(b.strip()) for b in backends.split(",") if b.strip())
    if not names:
        raise UserError("--backends is empty; give e.g. ffcv,dali,torch")
    open_converted(data)
    run_loader_bench(data, backends=names, split=split, batch_size=batch_size, workers=workers, res=res,
                     epochs=epochs, warmup_epochs=warmup_epochs, device=device, out_json=out_json)
