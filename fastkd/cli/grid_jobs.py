"""``fastkd grid --plan DIR / --job NAME / --status OUT``: the grid's options given again to each job, and the
one-line "waits for" exit of a job started too early."""
from __future__ import annotations

import os
import sys
from typing import List

import click

# options of `fastkd grid` that choose what it does, not the grid: never passed on to a job
JOB_ONLY = {"plan_dir", "job", "status_dir", "gpus_per_job"}


def fastkd_command() -> List[str]:
    """How a job runs this fastkd: the ``fastkd`` script beside this Python, else ``python -m fastkd``."""
    script = os.path.join(os.path.dirname(sys.executable), "fastkd")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "fastkd"]


def grid_args(ctx: click.Context) -> List[str]:
    """The options the user gave this ``fastkd grid`` command (on its command line or in the environment),
    written out again, so that a job recomputes the same spec; --plan, --job, --status and --gpus-per-job left out."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    args: List[str] = []
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in JOB_ONLY or ctx.get_parameter_source(p.name) not in given:
            continue
        if not p.expose_value:  # --memory-limit: applied by its callback, as FASTKD_MEMORY_LIMIT
            from fastkd.pipelines.memory_backend import ENV_LIMIT

            if os.environ.get(ENV_LIMIT):
                args += [p.opts[0], os.environ[ENV_LIMIT]]
            continue
        value = ctx.params[p.name]
        if p.is_flag and p.secondary_opts:
            args.append(p.opts[0] if value else p.secondary_opts[0])
        elif p.is_flag:
            if value == p.flag_value:
                args.append(p.opts[0])
        elif p.multiple:
            for v in value:
                args += [p.opts[0], str(v)]
        elif value is not None:
            args += [p.opts[0], str(value)]
    return args


def run_jobs_mode(spec, ctx: click.Context, plan_dir, job, gpus_per_job, progress: bool, one_pass: bool) -> None:
    """--plan: write the jobs (a job per row with one pass, else per cell); --job: run one (exit code NOT_READY,
    one line, when its inputs are not done)."""
    from fastkd.experiments.grid_plan import NOT_READY, NotReady, run_job, write_plan

    if plan_dir is not None:
        write_plan(spec, plan_dir, fastkd_command(), grid_args(ctx), gpus_per_job, one_pass)
        return
    try:
        run_job(spec, job, progress=progress, one_pass=one_pass)
    except NotReady as exc:
        click.echo(f"fastkd: not ready: {exc}", err=True)
        sys.exit(NOT_READY)


def print_status(out: str) -> None:
    from fastkd.experiments.grid_status import format_status, grid_status

    click.echo(format_status(out, grid_status(out)))
