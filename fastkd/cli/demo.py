"""``fastkd demo``: the main job on the embedded ORL faces."""
from __future__ import annotations

import click

from . import cli
from .options import backend_option


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the conversion and the runs.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@backend_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, epochs, backend, seed, workers, device, quiet):
    """Convert ORL faces, train a teacher, a student baseline and a KD student; print the table."""
    from fastkd.demo import run_demo
    from fastkd.pipelines import BACKENDS

    BACKENDS.canonical(backend)
    run_demo(out, epochs=epochs, backend=backend, seed=seed, workers=workers, device=device, progress=not quiet)
