"""``fastkd list datasets|models|methods|backends``."""
from __future__ import annotations

import click

from fastkd.errors import UserError
from fastkd.tables import format_table

from . import cli


@cli.command(name="list")
@click.argument("what", type=click.Choice(["datasets", "models", "methods", "backends"]))
@click.option("--data", default=None, help="datasets: describe this converted folder from its manifest.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@click.option("--source", type=click.Choice(["fastkd", "timm", "torchvision"]), default="fastkd", show_default=True,
              help="models: the seed's own models, or every classification model of timm / torchvision (use them "
              "as timm:NAME / torchvision:NAME).")
@click.option("--filter", "pattern", default="", help="models: only names containing WORD (or matching a pattern "
              "with *), e.g. --filter convnext.", metavar="WORD")
def list_cmd(what, data, markdown, source, pattern):
    """List the registered datasets, models (with parameter counts), methods or backends."""
    if what == "models" and source != "fastkd":
        headers, rows = _zoo_models(source, pattern)
    else:
        if source != "fastkd" or pattern:
            raise UserError("--source and --filter apply to `fastkd list models`")
        headers, rows = globals()[f"_{what}"](data)
    click.echo(format_table(headers, rows, markdown=markdown))


def _datasets(data):
    if data:
        from fastkd.pipelines import open_converted

        m = open_converted(data).manifest
        rows = [[m["dataset"], name, s["count"], m["num_classes"], m["image"]["resolution"], m["image"]["storage"]]
                for name, s in m["splits"].items()]
        return ["dataset", "split", "samples", "classes", "resolution", "storage"], rows
    from fastkd.converters import DATASETS

    rows = []
    for name, entry in DATASETS.items():
        s = entry.spec
        rows.append([name, s.split_counts.get("train"), s.split_counts.get("test", s.split_counts.get("val")),
                     s.num_classes or "any", s.resolution, s.layout])
    return ["dataset", "train", "test", "classes", "resolution", "official layout"], rows


def _models(_):
    from fastkd.models import describe_models

    rows = [[i.name, i.params, ", ".join(i.taps)] for i in describe_models(1000)]
    return ["model", "params (1000 classes)", "feature taps"], rows


def _zoo_models(source, pattern):
    from fastkd.models.zoo import describe_zoo

    rows = [[name, "?" if params is None else params] for name, params in describe_zoo(source, pattern)]
    if not rows:
        raise UserError(f"no {source} model matches {pattern!r}; try a shorter --filter")
    return ["model", "params (1000 classes)"], rows


def _methods(_):
    from fastkd.methods.catalogue import HEADERS, method_rows

    return HEADERS, method_rows()


def _backends(_):
    import importlib

    from fastkd.pipelines import BACKENDS

    rows = []
    for name, cls in BACKENDS.items():
        ok = True
        if cls.package:
            try:
                importlib.import_module(cls.package)
            except ImportError:
                ok = False
        rows.append([name, f"--formats {cls.reads}", cls.package or "(torch only)",
                     "yes" if ok else f"no: pip install 'fastkd[{cls.extra}]'"])
    return ["backend", "reads a conversion with", "needs", "available"], rows
