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
