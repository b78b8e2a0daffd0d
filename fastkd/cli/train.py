"""``fastkd train`` and ``fastkd eval``."""
from __future__ import annotations

import json

import click

from fastkd.errors import UserError
from fastkd.train.config import TrainConfig

from . import cli
from .config_options import config_options, config_values
from .options import backend_option, memory_limit_option


@cli.command()
@config_options()
@memory_limit_option()
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped (from the "
              "beginning when it holds no checkpoint yet).")
def train(resume, **kw):
    """Train a model with cross-entropy, or distil a teacher into a student."""
    from fastkd.methods import check_chosen_options
    from fastkd.pipelines import BACKENDS
    from fastkd.train.distributed import is_main_process
    from fastkd.train.tensorboard_log import require as require_tensorboard
    from fastkd.train.trainer import train as run

    BACKENDS.canonical(kw["backend"])
    cfg = TrainConfig(**config_values(kw))
    check_chosen_options(cfg.method, cfg.method_options)
    require_tensorboard(cfg.tensorboard)  # its optional package, before the run folder is claimed
    summary = run(cfg, resume=resume)
    if is_main_process():  # under torchrun only rank 0 reports
        click.echo(json.dumps(summary, indent=2))


@cli.command(name="eval")
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--checkpoint", required=True, help="A checkpoint.pt written by `fastkd train`, or a file written "
              "by `fastkd export` (.onnx, TorchScript .pt, .safetensors).")
@click.option("--split", default="test", show_default=True)
@backend_option()
@memory_limit_option()
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
def evaluate_cmd(data, checkpoint, split, backend, batch_size, workers, device):
    """Top-1/top-5 of a trained checkpoint, or of a file `fastkd export` wrote, on a split."""
    from fastkd.export.evaluate import evaluate_export
    from fastkd.export.recognise import find_export
    from fastkd.pipelines import open_converted
    from fastkd.train import checkpoint as ckpt
    from fastkd.train.build import config_for_eval, evaluate_weights

    exported = find_export(checkpoint)  # by its F.json, or by what the file holds; None for a checkpoint
    if exported is not None:
        result = evaluate_export(exported, data, eval_split=split, backend=backend, batch_size=batch_size,
                                 workers=workers, device=device)
        click.echo(json.dumps({"checkpoint": checkpoint, "split": split, "model": exported.meta["model_name"],
                               "format": exported.format, **result}, indent=2))
        return
    state = ckpt.load(checkpoint)
    if state.get("kind") != ckpt.KIND:
        raise UserError(f"{checkpoint} is not a fastkd checkpoint; give a checkpoint.pt written by `fastkd train`")
    converted = open_converted(data)
    if converted.num_classes != state["num_classes"]:
        raise UserError(f"{checkpoint} predicts {state['num_classes']} classes but {data} has "
                        f"{converted.num_classes}; evaluate on the dataset it was trained on")
    cfg = config_for_eval(data, state, eval_split=split, backend=backend, batch_size=batch_size, workers=workers,
                          device=device)
    result = evaluate_weights(cfg, checkpoint)
    click.echo(json.dumps({"checkpoint": checkpoint, "split": split, "model": state["model_name"], **result}, indent=2))
