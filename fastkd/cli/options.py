"""Options whose help lists a registry's names, read from the registry when help is shown (importing the
registries pulls in torch, which every command would otherwise pay for at start-up)."""
from __future__ import annotations

import importlib

import click


class RegistryOption(click.Option):
    """A click option whose help ends with ``One of: <names>`` of ``registry`` (``"module:ATTRIBUTE"``)."""

    def __init__(self, *decls, registry: str, **kwargs):
        self.registry = registry
        super().__init__(*decls, **kwargs)

    def get_help_record(self, ctx):
        module, attribute = self.registry.split(":")
        names = ", ".join(getattr(importlib.import_module(module), attribute).names())
        text = self.help
        self.help = f"{text} One of: {names}." if text else f"One of: {names}."
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = text


def backend_option(*decls, help="Data pipeline (see `fastkd list backends`).", **kwargs):
    """``--backend`` (default ``torch``) with the registered backends in its help."""
    return click.option(*(decls or ("--backend",)), cls=RegistryOption, registry="fastkd.pipelines:BACKENDS",
                        default="torch", show_default=True, help=help, **kwargs)


def _apply_memory_limit(ctx, param, value):
    if value is not None:
        import os

        from fastkd.errors import UserError
        from fastkd.pipelines.memory_backend import ENV_LIMIT, parse_bytes

        try:
            parse_bytes(value)
        except UserError:
            raise click.BadParameter(f"{value!r} is not a size; give bytes or e.g. 512M, 16G") from None
        os.environ[ENV_LIMIT] = value  # DataLoader workers and every Loader of the run see it too
    return value


def memory_limit_option():
    """``--memory-limit SIZE``: the memory backend's limit for this command (as ``FASTKD_MEMORY_LIMIT``)."""
    return click.option("--memory-limit", default=None, metavar="SIZE", expose_value=False, is_eager=True,
                        callback=_apply_memory_limit,
                        help="Most memory the memory backend may hold the decoded split in, e.g. 12G (default: 8 GiB "
                             "on a GPU, 80% of the available RAM on a CPU; or FASTKD_MEMORY_LIMIT).")


def one_pass_option():
    """``--one-pass/--no-one-pass`` of the multi-run commands (grid, compare)."""
    return click.option("--one-pass/--no-one-pass", default=True, show_default=True,
                        help="Train the cells that see the same batches (grid: one teacher and seed; compare: one seed) "
                             "in one pass over the data: one decode and one teacher read per batch for all of them, "
                             "when their state fits in memory; --no-one-pass trains them one after another. Each cell "
                             "ends with the same weights either way.")
