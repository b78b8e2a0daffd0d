"""``fastkd export``."""
from __future__ import annotations

import json

import click

from fastkd.export import FORMATS

from . import cli
from .options import backend_option, memory_limit_option


@cli.command(name="export")
@click.option("--checkpoint", required=True, help="A checkpoint.pt written by `fastkd train`.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="safetensors: the state dict and its metadata; torchscript: a traced, frozen module for "
                   "torch.jit.load; onnx: for ONNX Runtime (needs pip install 'fastkd[export]').")
@click.option("--out", required=True, help="The file F to write; its description goes to F.json.")
@click.option("--res", type=click.IntRange(1), default=None,
              help="Input side of the exported model (default: the checkpoint's; a vision transformer's is fixed).")
@click.option("--data", default=None, help="Converted dataset whose evaluation views check the export "
                                           "(default: the run's, from the checkpoint).")
@click.option("--atol", type=click.FloatRange(0), default=1e-4, show_default=True,
              help="Largest absolute logit difference from the PyTorch model that the check accepts.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Evaluation views in the check's batch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing F and F.json.")
@backend_option()
@memory_limit_option()
def export_cmd(checkpoint, fmt, out, res, data, atol, batch_size, overwrite, backend):
    """Write a trained student alone for inference (safetensors, TorchScript or ONNX), checked against the
    PyTorch model on real evaluation views before it is written; F.json records its input and normalisation."""
    from fastkd.export.exporter import export_checkpoint
    from fastkd.pipelines import BACKENDS

    BACKENDS.canonical(backend)
    summary = export_checkpoint(checkpoint, fmt, out, res=res, data=data, atol=atol, batch_size=batch_size,
                                backend=backend, overwrite=overwrite)
    click.echo(json.dumps(summary, indent=2))
