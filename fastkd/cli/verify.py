"""``fastkd verify``."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli


@cli.command()
@click.argument("folder")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def verify(folder, quiet):
    """Check every file of a converted FOLDER against the sha256 its manifest records."""
    from fastkd.converted import verify as check

    bad = check(folder, progress=not quiet)
    for line in bad:
        click.echo(f"bad: {line}", err=True)
    if bad:
        raise UserError(f"{len(bad)} damaged file(s) in {folder} (listed above); convert the dataset again")
    click.echo(f"{folder}: every file matches its manifest checksum")
