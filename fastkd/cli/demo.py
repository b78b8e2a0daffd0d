"""``fastkd demo``: the main job on the embedded ORL faces."""
from __future__ import annotations

import click

from . import cli
from .options import RegistryOption

# the defaults of fastkd.experiments.demo, repeated here so that `fastkd demo --help` does not import torch
EPOCHS, TEACHER_EPOCHS, METHOD, SEEDS, BACKEND = 20, 40, "rkd", "0,1,2", "memory"


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the conversion and the runs.")
@click.option("--epochs", type=click.IntRange(1), default=EPOCHS, show_default=True,
              help="Epochs of each student run (alone and distilled).")
@click.option("--teacher-epochs", type=click.IntRange(1), default=TEACHER_EPOCHS, show_default=True)
@click.option("--method", default=METHOD, show_default=True,
              help="Distillation method (see `fastkd list methods`), with its paper defaults.")
@click.option("--seeds", default=SEEDS, show_default=True,
              help="Comma list of seeds of the student runs; the teacher trains once, with the first.")
@click.option("--backend", cls=RegistryOption, registry="fastkd.pipelines:BACKENDS", default=BACKEND,
              show_default=True, help="Data pipeline (see `fastkd list backends`).")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, epochs, teacher_epochs, method, seeds, backend, workers, device, quiet):
    """Convert ORL faces; train a teacher, the student alone and the distilled student over seeds; print the
    table (mean and spread over the seeds) and the teacher cache's speed-up."""
    from fastkd.errors import UserError
    from fastkd.experiments.demo import run_demo
    from fastkd.methods import parse_methods
    from fastkd.pipelines import BACKENDS

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {seeds!r} must be a comma list of integers, e.g. 0,1,2") from None
    if not seed_list or min(seed_list) < 0:
        raise UserError(f"--seeds {seeds!r} must be a comma list of integers >= 0, e.g. 0,1,2")
    if [m.name for m in parse_methods(method)] == ["ce"]:  # unknown names fail here, before any work
        raise UserError(f"--method {method!r} trains no teacher signal; choose a distillation method such as at, "
                        "rkd or kd (see `fastkd list methods`)")
    BACKENDS.canonical(backend)
    run_demo(out, epochs=epochs, teacher_epochs=teacher_epochs, method=method, seeds=seed_list, backend=backend,
             workers=workers, device=device, progress=not quiet)
