"""``fastkd compare``: methods x seeds for one student, as a table (mean and spread of top-1)."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli

COMPARE_OPT = {"help": "A method's option for every cell that uses the method (repeatable), e.g. "
                       "--opt sskd.ss_epochs=5 (recorded in compare.json)."}
from .config_options import CELLS_TENSORBOARD, chosen_method_options, config_options
from .options import backend_option, one_pass_option


@cli.command()
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--out", required=True, help="Folder for the cells (<method>/seed<k>) and compare.md/json.")
@click.option("--student", required=True)
@click.option("--teacher", default=None)
@click.option("--teacher-weights", default=None, help="Teacher weights for every method but ce.")
@click.option("--methods", default="ce,kd", show_default=True, help="Comma list; ce is the student baseline.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--res", type=int, default=None)
@backend_option()
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True)
@one_pass_option()
@config_options(["method_options", "tensorboard"], {"tensorboard": CELLS_TENSORBOARD, "method_options": COMPARE_OPT})
def compare(data, out, student, teacher, teacher_weights, methods, seeds, epochs, batch_size, lr, res, backend,
            workers, device, quiet, one_pass, tensorboard, method_options):
    """Distil one student with several methods over several seeds; print mean and spread of top-1."""
    from fastkd.experiments.compare import run_compare
    from fastkd.methods import parse_methods
    from fastkd.pipelines import BACKENDS
    from fastkd.train.config import TrainConfig

    names = [m.strip() for m in methods.split(",") if m.strip()]
    for name in names:
        parse_methods(name)  # unknown names fail here, before any training
    options = chosen_method_options(method_options, names)  # each --opt names a compared method and one option
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {seeds!r} must be a comma list of integers")
    BACKENDS.canonical(backend)
    base = TrainConfig(data=data, out="", student=student, teacher=teacher, teacher_weights=teacher_weights,
                       epochs=epochs, batch_size=batch_size, lr=lr, res=res, backend=backend, workers=workers,
                       device=device, progress=not quiet, tensorboard=tensorboard, method_options=options)
    run_compare(base, names, seed_list, out, one_pass=one_pass)
