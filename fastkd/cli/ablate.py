"""``fastkd ablate``: the seed's training-tricks table, cumulative, resumable cell by cell."""
from __future__ import annotations

import click

from . import cli
from .config_options import CELLS_TENSORBOARD, config_options
from .options import backend_option


@cli.command()
@click.option("--dataset", "--data", "data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--model", required=True, help="The model to train (see `fastkd list models`).")
@click.option("--out", default=None, help="Folder for the rows and ablation.md/json (default: runs/ablate-MODEL).")
@click.option("--tricks", default=None, help="Comma list of tricks to add (default: all, in the seed's order): "
              "kaiming init, pretrained weights, no bias decay, label smoothing, random erasing, linear lr scaling, "
              "cutout, dropout, cosine lr decay, warm-up, mixup, zero-gamma, data augmentation, "
              "lr schedule: multistep.")
@click.option("--pretrained", default=None, help="Weights for the 'pretrained weights' row (skipped without).")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--res", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@backend_option()
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
@config_options(["tensorboard"], {"tensorboard": CELLS_TENSORBOARD})
def ablate(data, model, out, tricks, pretrained, epochs, batch_size, lr, res, seed, backend, workers, device, quiet,
           tensorboard):
    """Train a baseline, then add the training tricks one at a time; write the table as Markdown and JSON."""
    from fastkd.experiments.ablate import run_ablation
    from fastkd.models import canonical_name
    from fastkd.pipelines import BACKENDS, open_converted
    from fastkd.train.config import TrainConfig

    canonical_name(model)
    BACKENDS.canonical(backend)
    open_converted(data)
    only = [t.strip() for t in tricks.split(",") if t.strip()] if tricks else None
    cfg = TrainConfig(data=data, out="", student=model, epochs=epochs, batch_size=batch_size, lr=lr, res=res,
                      seed=seed, backend=backend, workers=workers, device=device, progress=not quiet,
                      tensorboard=tensorboard)
    run_ablation(cfg, out or f"runs/ablate-{canonical_name(model)}", only=only, pretrained=pretrained)
