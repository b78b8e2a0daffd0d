"""The ``fastkd`` command: convert, verify, train, eval, export, compare, ablate, grid, report, bench, list, demo.

A user's mistake (``UserError`` or a usage error) is printed as one line, ``fastkd: error: ...``, with
exit code 2 and no traceback; so is a full disk (ENOSPC, or EDQUOT: over quota), exit code 1: every
writer writes under a temporary name and renames when complete, so the previous complete file is intact.
"""
from __future__ import annotations

import errno
import sys

import click

from fastkd.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fastkd")
def cli():
    """fastkd: fast, reproducible knowledge distillation for image classification."""


def main(argv=None) -> None:
    from . import ablate, bench, cache, compare, convert, demo, export, grid, listing, train, verify  # noqa: F401  (register subcommands)
    from fastkd.malloc import keep_freed_memory

    keep_freed_memory()  # big tensors without page faults (fastkd/malloc.py)

    try:
        cli.main(args=argv, prog_name="fastkd", standalone_mode=False)
    except UserError as exc:
        click.echo(f"fastkd: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("fastkd: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"fastkd: error: {exc.format_message()} (see fastkd {' '.join(_command_path(argv))} --help)", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("fastkd: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        click.echo(f"fastkd: error: no space left on device{where}; free space and rerun (the previous complete "
                   "file is kept)", err=True)
        sys.exit(1)


def _command_path(argv):
    args = list(sys.argv[1:] if argv is None else argv)
    return [a for a in args[:2] if not a.startswith("-")][:2]
