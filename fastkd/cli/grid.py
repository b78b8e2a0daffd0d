"""``fastkd grid`` (teachers x methods x seeds, resumable) and ``fastkd report`` (its table from run folders)."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli
from .config_options import CELLS_TENSORBOARD, config_options, config_values
from .options import memory_limit_option, one_pass_option

# the TrainConfig options a grid sets for every run (TrainConfig's declaration; a recipe fills the rest)
GRID_FIELDS = ("epochs", "batch_size", "lr", "res", "views_per_image", "backend", "workers", "device", "progress",
               "tensorboard")
GRID_OVERRIDES = {"epochs": {"help": "Epochs of every run."}, "lr": {"help": "Learning rate of every run."},
                  "progress": {"help": "No per-epoch progress bars (grid progress lines stay)."},
                  "tensorboard": CELLS_TENSORBOARD}


def _names(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


def _weights(items):
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--teacher-weights {item!r} is not NAME=PATH (e.g. --teacher-weights ResNet18=r18.pt)")
        out[name.strip()] = path.strip()
    return out


@cli.command()
@click.option("--data", default=None, help="A folder written by `fastkd convert` (required).")
@click.option("--out", default=None, help="Grid folder (required): a run folder per cell, report.md/csv/json, plots/.")
@click.option("--recipe", default=None, help="A shipped recipe (cifar100-seed, crd-cifar100) or a recipe JSON "
              "file; the options below override it.")
@click.option("--teachers", default=None, help="Comma list of teacher models (the table's columns).")
@click.option("--student", default=None, help="The student model.")
@click.option("--methods", default=None, help="Comma list of methods (rows), e.g. kd,fitnets,rkd,pkt,l2,at,overhaul.")
@click.option("--seeds", default=None, help="Comma list of seeds [recipe, else 0,1,2].")
@click.option("--teacher-weights", "teacher_weights", multiple=True, metavar="NAME=PATH",
              help="Use these weights for teacher NAME instead of training it (repeat per teacher).")
@config_options(GRID_FIELDS, GRID_OVERRIDES, from_recipe=True)
@click.option("--teacher-epochs", type=click.IntRange(1), default=None, help="Epochs of the teachers only.")
@click.option("--student-lr", type=float, default=None, help="Learning rate of the student runs only.")
@memory_limit_option()
@click.option("--plan", "plan_dir", default=None, metavar="DIR", help="Train nothing: write the grid's jobs to DIR "
              "(jobs.txt, and submit.sh for SLURM), for a cluster with a shared file system: a job per (teacher, "
              "seed) row of method cells (one pass), or per cell with --no-one-pass.")
@click.option("--job", default=None, metavar="NAME", help="Run one job of the grid's plan (see DIR/jobs.txt).")
@click.option("--gpus-per-job", default="1", show_default=True, metavar="N", help="With --plan: submit.sh's "
              "#SBATCH --gpus (a count or TYPE:COUNT; 0: none); with 2 or more, each job runs under torchrun, a "
              "process per GPU.")
@click.option("--status", "status_dir", default=None, metavar="OUT", help="Print where the grid in OUT stands "
              "(cells done, running where, waiting; time left) and exit.")
@one_pass_option()
@click.pass_context
def grid(ctx, data, out, recipe, teachers, student, methods, seeds, teacher_weights, teacher_epochs, student_lr,
         plan_dir, job, gpus_per_job, status_dir, one_pass, **kw):
    """Teachers x methods x seeds: train or load each teacher once, the student baseline, every cell;
    skips finished cells, resumes a stopped one; writes the table (Markdown, CSV) and plots."""
    from fastkd.experiments.grid import GridSpec, run_grid

    from .grid_jobs import print_status, run_jobs_mode

    if status_dir is not None:
        return print_status(status_dir)
    if not data or not out:
        raise UserError("give --data (a folder written by `fastkd convert`) and --out (the grid folder)")
    if plan_dir is not None and job is not None:
        raise UserError("--plan writes the jobs and --job runs one of them: give one of the two")
    from fastkd.pipelines import BACKENDS, open_converted
    from fastkd.recipes import load_recipe

    r = load_recipe(recipe) if recipe else {}
    try:
        seed_list = [int(s) for s in _names(seeds)] if seeds is not None else list(r.get("seeds", [0, 1, 2]))
    except ValueError:
        raise UserError(f"--seeds {seeds!r} must be a comma list of integers")
    given = config_values(kw, GRID_FIELDS)
    progress = given.pop("progress", True)
    lr = given.get("lr")
    train = {**r.get("train", {}), **given}
    teacher_train = {**r.get("teacher_train", {}), **({"epochs": teacher_epochs} if teacher_epochs else {})}
    student_train = {**r.get("student_train", {}), **({"lr": student_lr} if student_lr is not None else {})}
    if lr is not None and student_lr is None:
        student_train.pop("lr", None)  # --lr alone sets every run's rate
    spec = GridSpec(data=data, out=out, teachers=_names(teachers) or r.get("teachers", []),
                    student=student or r.get("student") or "", methods=_names(methods) or r.get("methods", []),
                    seeds=seed_list, teacher_weights=_weights(teacher_weights), train=train,
                    teacher_train=teacher_train, student_train=student_train,
                    method_options=r.get("method_options", {}), published=r.get("published"),
                    description=r.get("description", ""))
    if not spec.student:
        raise UserError("give --student (or a --recipe that names one)")
    BACKENDS.canonical(train.get("backend", "torch"))
    open_converted(data)
    if plan_dir is not None or job is not None:
        return run_jobs_mode(spec, ctx, plan_dir, job, gpus_per_job, progress, one_pass)
    run_grid(spec, progress=progress, one_pass=one_pass)


@cli.command()
@click.argument("folder")
def report(folder):
    """Rewrite report.md/csv/json and plots/ of FOLDER from its finished runs (grid, compare or train), without
    training."""
    from fastkd.experiments.report import write_report

    write_report(folder)
