"""The ``fastkd`` command: convert, train, eval, bench, list, demo.

A user's mistake (``UserError`` or a usage error) is printed as one line, ``fastkd: error: ...``, with
exit code 2 and no traceback.
"""
from __future__ import annotations

import sys

import click

from fastkd.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="fastkd")
def cli():
    """fastkd: fast, reproducible knowledge distillation for image classification."""


def main(argv=None) -> None:
    from . import ablate, bench, cache, compare, convert, demo, listing, train  # noqa: F401  (register subcommands)

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


def _command_path(argv):
    args = list(sys.argv[1:] if argv is None else argv)
    return [a for a in args[:2] if not a.startswith("-")][:2]
