"""``fastkd train`` and ``fastkd eval``."""
from __future__ import annotations

import json

import click

from fastkd.errors import UserError

from . import cli
from .options import backend_option, memory_limit_option


def parse_method_options(items) -> dict:
    """``("kd.temperature=2", "kd.weight=0.5")`` -> ``{"kd": {"temperature": 2.0, "weight": 0.5}}``."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--opt {item!r} is not METHOD.NAME=VALUE (e.g. --opt kd.temperature=4)")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(method.lower(), {})[name] = parsed
    return out


def _check_method_options(cfg) -> None:
    import inspect

    from fastkd.methods import METHODS

    chosen = {METHODS.canonical(p) for p in cfg.method.split("+") if p.strip()}
    for method, opts in cfg.method_options.items():
        name = METHODS.canonical(method)
        if name not in chosen:
            raise UserError(f"--opt {method}.* given but --method is {cfg.method}; drop it or add {name} to --method")
        params = [p for p in inspect.signature(METHODS.get(name).__init__).parameters if p != "self"]
        for key in opts:
            if key not in params:
                raise UserError(f"method {name} has no option {key!r}; its options: {', '.join(params) or 'none'}")


@cli.command()
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--out", required=True, help="Run folder: config, metrics.jsonl, checkpoint.pt, summary.json.")
@click.option("--student", "--model", "student", required=True, help="Model to train (see `fastkd list models`).")
@click.option("--teacher", default=None, help="Teacher architecture (read from a fastkd checkpoint if omitted).")
@click.option("--teacher-weights", default=None, help="Teacher weights: fastkd checkpoint or torchvision state dict.")
@click.option("--teacher-cache", default=None, help="Teacher-output cache folder: batches it holds are read "
              "(the teacher is not run), the others run the teacher and are written (see `fastkd cache`).")
@click.option("--cache-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Storage of cached teacher signals (float32: bit-identical to the online teacher).")
@click.option("--cache-topk", type=click.IntRange(0), default=0, show_default=True,
              help="Cache only the K largest logits and the rest's log-sum-exp (FKD); 0: all logits.")
@click.option("--cache-budget", type=float, default=1e9, show_default=True,
              help="Bytes of teacher feature maps the cache may hold over all epochs; the maps beyond run online.")
@click.option("--method", default="ce", show_default=True, help="ce (no teacher), kd, or a sum such as kd+at.")
@click.option("--opt", "opts", multiple=True, metavar="METHOD.NAME=VALUE",
              help="Method hyper-parameter, e.g. --opt kd.temperature=4 --opt kd.weight=0.9 (paper defaults otherwise).")
@click.option("--ce-weight", type=float, default=None, help="Weight of the hard-label cross-entropy "
              "(default: the method's paper value; kd: 0.1, ce: 1).")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Per process (torchrun: x world size).")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate (SGD).")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov", is_flag=True)
@click.option("--wd", "weight_decay", type=float, default=5e-4, show_default=True, help="Weight decay.")
@click.option("--schedule", type=click.Choice(["cosine", "step", "multistep", "constant"]), default="cosine",
              show_default=True)
@click.option("--step-size", type=int, default=30, show_default=True, help="step: decay every N epochs.")
@click.option("--milestones", default="", help="multistep: comma list of epochs, e.g. 150,180,210.")
@click.option("--gamma", type=float, default=0.1, show_default=True, help="Decay factor of step/multistep.")
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True, help="Linear warm-up length.")
@click.option("--init", type=click.Choice(["default", "kaiming", "xavier"]), default="default", show_default=True,
              help="Weight initialisation (default: each architecture's own).")
@click.option("--pretrained", default=None, help="Local weights for the student (torchvision state dict or fastkd "
              "checkpoint); tensors that do not fit (another classifier, a low-res stem) keep their init.")
@click.option("--no-bias-decay", is_flag=True, help="No weight decay on biases and norm parameters.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True, help="Szegedy et al. 2016 (0.1 usual).")
@click.option("--lr-scaling", is_flag=True, help="Linear scaling: lr x global batch / 256 (Goyal et al. 2017).")
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Dropout before the classifier.")
@click.option("--zero-gamma", is_flag=True, help="Zero-init the last BN gamma of each residual block.")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
              help="Mixed precision (autocast; fp16 adds a gradient scaler, saved in checkpoints).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory format for the models and batches (faster convolutions on GPUs and CPUs).")
@click.option("--compile", is_flag=True, help="torch.compile the student.")
@click.option("--sync-bn", is_flag=True, help="torchrun: BatchNorm statistics over the global batch of all ranks "
              "(N ranks then train as one process with batch N x B).")
@click.option("--no-augment", "views", flag_value=False, default=True,
              help="Train on centre views (no crop/flip).")
@click.option("--erasing", type=float, default=0.0, show_default=True,
              help="Random erasing probability (Zhong et al. 2020: 0.5; area 0.02-0.4, aspect 0.3-3.3).")
@click.option("--cutout", type=float, default=0.0, show_default=True,
              help="Cutout square side as a fraction of the image side (DeVries & Taylor 2017: 0.5, 16 px at 32).")
@click.option("--mixup", type=float, default=0.0, show_default=True,
              help="Mixup Beta alpha (Zhang et al. 2018: 1.0 CIFAR, 0.2 ImageNet); needs an even batch size.")
@click.option("--cutmix", type=float, default=0.0, show_default=True,
              help="CutMix Beta alpha (Yun et al. 2019: 1.0); with --mixup, each pair picks one at random.")
@click.option("--res", type=int, default=None, help="Training resolution (default: the dataset's). <=64 selects "
              "the low-resolution stem and pad-and-crop; larger: RandomResizedCrop.")
@backend_option()
@memory_limit_option()
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--train-split", default="train", show_default=True)
@click.option("--eval-split", default=None, help="Split for top-1/top-5 (default: test, else val).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--eval-every", type=int, default=1, show_default=True, help="Evaluate every N epochs (and after the last).")
@click.option("--checkpoint-every", type=float, default=5.0, show_default=True,
              help="Minutes between checkpoints within an epoch (0: at epoch ends only). SIGTERM/SIGINT also "
              "write one and exit (codes 143/130).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped (from the "
              "beginning when it holds no checkpoint yet).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(opts, milestones, resume, quiet, **kw):
    """Train a model with cross-entropy, or distil a teacher into a student."""
    from fastkd.pipelines import BACKENDS
    from fastkd.train.config import TrainConfig
    from fastkd.train.distributed import is_main_process
    from fastkd.train.trainer import train as run

    BACKENDS.canonical(kw["backend"])
    try:
        ms = [int(m) for m in milestones.split(",") if m.strip()]
    except ValueError:
        raise UserError(f"--milestones {milestones!r} must be a comma list of epochs, e.g. 150,180,210")
    cfg = TrainConfig(**kw, milestones=ms, method_options=parse_method_options(opts), progress=not quiet)
    _check_method_options(cfg)
    summary = run(cfg, resume=resume)
    if is_main_process():  # under torchrun only rank 0 reports
        click.echo(json.dumps(summary, indent=2))


@cli.command(name="eval")
@click.option("--data", required=True, help="A folder written by `fastkd convert`.")
@click.option("--checkpoint", required=True, help="A checkpoint.pt written by `fastkd train`.")
@click.option("--split", default="test", show_default=True)
@backend_option()
@memory_limit_option()
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
def evaluate_cmd(data, checkpoint, split, backend, batch_size, workers, device):
    """Top-1/top-5 of a trained checkpoint on a split."""
    from fastkd.models import create_model
    from fastkd.pipelines import Loader, open_converted
    from fastkd.train import checkpoint as ckpt
    from fastkd.train.distributed import Dist, resolve_device
    from fastkd.train.evaluate import evaluate
    from fastkd.train.weights import load_weights

    state = ckpt.load(checkpoint)
    if state.get("kind") != ckpt.KIND:
        raise UserError(f"{checkpoint} is not a fastkd checkpoint; give a checkpoint.pt written by `fastkd train`")
    converted = open_converted(data)
    if converted.num_classes != state["num_classes"]:
        raise UserError(f"{checkpoint} predicts {state['num_classes']} classes but {data} has "
                        f"{converted.num_classes}; evaluate on the dataset it was trained on")
    dev = resolve_device(device, Dist())
    model = create_model(state["model_name"], state["num_classes"], state["low_res"])
    load_weights(model, checkpoint, "model")
    loader = Loader(converted, split, backend=backend, batch_size=batch_size, train=False, res=state["res"],
                    workers=workers, device=dev)
    result = evaluate(model.to(dev), loader)
    click.echo(json.dumps({"checkpoint": checkpoint, "split": split, "model": state["model_name"], **result}, indent=2))
