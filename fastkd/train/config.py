"""Everything a training run is configured by; saved as ``config.json`` beside the run.

Checked once, at construction (:meth:`TrainConfig.__post_init__`): a bad value is a one-line UserError
before any data is opened, never a failure at the first step."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Dict, List, Optional

from fastkd.errors import UserError
from fastkd.option_rules import is_int, is_number, method_option_rule

SCHEDULES = ("cosine", "step", "multistep", "constant")
INITS = ("default", "kaiming", "xavier")
AMP_MODES = ("off", "bf16", "fp16")
CACHE_DTYPES = ("float16", "float32")

# options that do not change the numbers a run produces, so a resume may differ in them
RESUME_FREE = frozenset({"progress", "workers", "device", "eval_every", "backend", "checkpoint_every", "tensorboard"})


def option(default=..., help: str = "", *, factory=None, **cli):
    """A :class:`TrainConfig` field and its command-line option in one declaration: ``help`` is the option's
    help text; ``cli`` says how it is spelled and parsed (read by ``fastkd.cli.config_options``):
    ``flag`` (default ``--<name-with-dashes>``), ``aliases``, ``choices``, ``min`` (integers),
    ``negatable`` (``--x/--no-x``), ``inverted`` (a flag that sets False, e.g. ``--quiet``), ``comma_list``
    (``--milestones 150,180``), ``method_options`` (repeated ``--opt METHOD.NAME=VALUE``), ``metavar``,
    ``required``; ``cli=False``: no option (set by a command itself)."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is ...:  # no default: the constructor needs it
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    data: str = option(..., help="A folder written by `fastkd convert`.", required=True)
    out: str = option(..., help="Run folder: config, metrics.jsonl, checkpoint.pt, summary.json.", required=True)
    student: str = option(..., help="Model to train (see `fastkd list models`).", aliases=("--model",), required=True)
    teacher: Optional[str] = option(None, "Teacher architecture (read from a fastkd checkpoint if omitted).")
    teacher_weights: Optional[str] = option(None, "Teacher weights, local: .safetensors, a .pt/.pth/.bin state dict, "
                                            "a timm/Hugging Face folder (model.safetensors or pytorch_model.bin + "
                                            "config.json) or a fastkd checkpoint / model.safetensors.")
    teacher_cache: Optional[str] = option(
        None, "Teacher-output cache folder: batches it holds are read (the teacher is not run), the others run the "
        "teacher and are written (see `fastkd cache`).")
    cache_dtype: str = option("float16", "Storage of cached teacher signals (float32: bit-identical to the online "
                              "teacher).", choices=CACHE_DTYPES)
    cache_topk: int = option(0, "Cache only the K largest logits and the rest's log-sum-exp (FKD); 0: all logits.",
                             min=0)
    cache_budget: float = option(1e9, "Bytes of teacher feature maps the cache may hold over all epochs; the maps "
                                 "beyond run online.")
    method: str = option("ce", "ce (no teacher), kd, or a sum such as kd+at.")
    method_options: Dict[str, Dict[str, object]] = option(
        factory=dict, help="Method hyper-parameter, e.g. --opt kd.temperature=4 --opt kd.weight=0.9 (paper "
        "defaults otherwise).", flag="--opt", method_options=True, metavar="METHOD.NAME=VALUE")
    ce_weight: Optional[float] = option(None, "Weight of the hard-label cross-entropy (default: the method's paper "
                                        "value; kd: 0.1, ce: 1).")
    epochs: int = option(30, "Epochs to train.", min=1)
    batch_size: int = option(64, "Per process (torchrun: x world size).", min=1)
    lr: float = option(0.1, "Peak learning rate (SGD).")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(False, "Nesterov momentum.")
    weight_decay: float = option(5e-4, "Weight decay.", flag="--wd")
    schedule: str = option("cosine", "Learning-rate schedule.", choices=SCHEDULES)
    step_size: int = option(30, "step: decay every N epochs.")
    milestones: List[int] = option(factory=list, help="multistep: comma list of epochs, e.g. 150,180,210.",
                                   comma_list=True)
    gamma: float = option(0.1, "Decay factor of step/multistep.")
    warmup_epochs: float = option(0.0, "Linear warm-up length.")
    # tricks (Bag of Tricks, He et al. 2019, and the seed's list); defaults leave them off
    init: str = option("default", "Weight initialisation (default: each architecture's own).", choices=INITS)
    pretrained: Optional[str] = option(None, "Local weights to start the student from (any --teacher-weights "
                                       "format): a classifier of another class count is replaced by a new head "
                                       "(fine-tuning), a seed model's low-res stem keeps its init; any other "
                                       "misfit is an error.")
    body_lr_scale: float = option(1.0, "With --pretrained: learning rate of the pretrained body as a fraction of "
                                  "--lr; the new head (a classifier replaced for this dataset's classes) trains at "
                                  "--lr (fine-tuning: 0.1).")
    no_bias_decay: bool = option(False, "No weight decay on biases and norm parameters.")
    label_smoothing: float = option(0.0, "Szegedy et al. 2016 (0.1 usual).")
    lr_scaling: bool = option(False, "Linear scaling: lr x global batch / 256 (Goyal et al. 2017).")
    dropout: float = option(0.0, "Dropout before the classifier.")
    zero_gamma: bool = option(False, "Zero-init the last BN gamma of each residual block.")
    amp: str = option("off", "Mixed precision (autocast; fp16 adds a gradient scaler, saved in checkpoints).",
                      choices=AMP_MODES)
    channels_last: bool = option(True, "NHWC memory format for the models and batches (faster convolutions on "
                                 "GPUs and CPUs; docs/memory-format.md).", negatable=True)
    compile: bool = option(False, "torch.compile the student.")
    sync_bn: bool = option(False, "torchrun: BatchNorm statistics over the global batch of all ranks (N ranks then "
                           "train as one process with batch N x B).")
    # data-side tricks, applied on the device to whole batches (pipelines/augment)
    views: bool = option(True, "Train on centre views (no crop/flip).", flag="--no-augment", inverted=True)
    erasing: float = option(0.0, "Random erasing probability (Zhong et al. 2020: 0.5; area 0.02-0.4, aspect "
                            "0.3-3.3).")
    cutout: float = option(0.0, "Cutout square side as a fraction of the image side (DeVries & Taylor 2017: 0.5, "
                           "16 px at 32).")
    mixup: float = option(0.0, "Mixup Beta alpha (Zhang et al. 2018: 1.0 CIFAR, 0.2 ImageNet); needs an even "
                          "batch size.")
    cutmix: float = option(0.0, "CutMix Beta alpha (Yun et al. 2019: 1.0); with --mixup, each pair picks one at "
                           "random.")
    views_per_image: int = option(1, "K views cut from each decoded training photo (FKD's multi-crop, repeated "
                                  "augmentation): a batch holds batch-size/K photos x K views, an epoch is one pass "
                                  "over the photos (K x N views); 1: one view per image.", min=1)
    res: Optional[int] = option(None, "Training resolution (default: the dataset's). <=64 selects the "
                                "low-resolution stem and pad-and-crop; larger: RandomResizedCrop.")
    backend: str = option("torch", "Data pipeline (see `fastkd list backends`).", registry="fastkd.pipelines:BACKENDS")
    workers: int = option(2, "Data-loading worker processes.")
    train_split: str = option("train", "Split to train on.")
    eval_split: Optional[str] = option(None, "Split for top-1/top-5 (default: test, else val).")
    seed: int = option(0, "Seed of the initialisation, the epoch orders, views and augmentations.")
    device: str = option("auto", "auto, cpu or cuda.")
    eval_every: int = option(1, "Evaluate every N epochs (and after the last).")
    checkpoint_every: float = option(5.0, "Minutes between checkpoints within an epoch (0: at epoch ends only). "
                                     "SIGTERM/SIGINT also write one and exit (codes 143/130).")
    tensorboard: Optional[str] = option(None, "Also write the metrics.jsonl scalars (loss terms, top-1/top-5, lr, "
                                        "images/s) as TensorBoard events in this folder, one per run (`tensorboard "
                                        "--logdir` on their parent shows the runs side by side; needs tensorboard).",
                                        metavar="DIR")
    progress: bool = option(True, "No progress bars.", flag="--quiet", inverted=True)

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise UserError(f"--{option.replace('_', '-')} {getattr(self, option)!r} {rule}")

        def integer(option: str, least: int) -> None:
            v = getattr(self, option)
            need(is_int(v) and v >= least, option, f"must be an integer >= {least}")

        def number(option: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
                   rule: str = "") -> None:
            v = getattr(self, option)
            ok = is_number(v) and math.isfinite(v) and (v > low if low_open else v >= low) and (
                v < high if high_open else v <= high)
            if not rule:
                lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
                rule = (f"must be {'>' if low_open else '>='} {low:g}" if high == math.inf else f"must be in {lo}, {hi}")
                if not (is_number(v) and math.isfinite(v)):
                    rule = "is not a finite number; it " + rule
            need(ok, option, rule)

        for option in ("epochs", "batch_size", "eval_every", "step_size", "views_per_image"):
            integer(option, 1)
        need(self.batch_size % self.views_per_image == 0, "batch_size",
             f"must be a multiple of --views-per-image {self.views_per_image} (a batch holds whole photos)")
        for option in ("workers", "cache_topk", "seed"):
            integer(option, 0)
        number("lr", 0, low_open=True)
        number("momentum", 0, 1, high_open=True)
        for option in ("weight_decay", "warmup_epochs", "checkpoint_every", "mixup", "cutmix", "cache_budget"):
            number(option, 0)
        need(self.ce_weight is None or (is_number(self.ce_weight) and math.isfinite(self.ce_weight)
                                        and self.ce_weight >= 0), "ce_weight", "must be a finite number >= 0")
        need(self.schedule in SCHEDULES, "schedule", f"is unknown; choose one of: {', '.join(SCHEDULES)}")
        need(self.cache_dtype in CACHE_DTYPES, "cache_dtype", f"is unknown; choose one of: {', '.join(CACHE_DTYPES)}")
        number("gamma", 0, low_open=True)
        number("body_lr_scale", 0, low_open=True)
        need(self.body_lr_scale == 1.0 or bool(self.pretrained), "body_lr_scale",
             "scales the learning rate of pretrained weights; add --pretrained FILE or drop it")
        need(self.schedule != "multistep" or bool(self.milestones), "milestones",
             "is empty; --schedule multistep needs epochs such as --milestones 150,180,210")
        need(isinstance(self.milestones, list) and all(is_int(m) and 0 <= m <= self.epochs for m in self.milestones)
             and self.milestones == sorted(self.milestones),
             "milestones", f"must be epochs in 0..{self.epochs} (--epochs), in increasing order")
        need(self.warmup_epochs <= self.epochs, "warmup_epochs", f"must not exceed --epochs {self.epochs}")
        need(self.init in INITS, "init", f"is unknown; choose one of: {', '.join(INITS)}")
        need(self.amp in AMP_MODES, "amp", f"is unknown; choose one of: {', '.join(AMP_MODES)}")
        number("label_smoothing", 0, 1, high_open=True)
        number("dropout", 0, 1, high_open=True)
        number("erasing", 0, 1, rule="is a probability; give a value in [0, 1]")
        number("cutout", 0, 1, high_open=True, rule="is a fraction of the image side; give a value in [0, 1)")
        need(self.res is None or (is_int(self.res) and self.res >= 8), "res", "must be at least 8 (pixels)")
        need(isinstance(self.method_options, dict) and all(isinstance(v, dict) for v in self.method_options.values()),
             "method_options", "must map a method to its {option: value}")
        for method, opts in self.method_options.items():
            for name, value in opts.items():
                bad = method_option_rule(name, value)
                if bad:
                    raise UserError(f"--opt {method}.{name}={value!r} {bad}")

    def augment_config(self):
        """The batch augmentations these options ask for (pipelines/augment.py; the papers' shapes: erasing
        area 0.02-0.4, aspect 0.3-3.3)."""
        from fastkd.pipelines.augment import AugmentConfig

        return AugmentConfig(erasing_p=self.erasing, cutout=self.cutout, mixup_alpha=self.mixup, cutmix_alpha=self.cutmix)

    def differs_from(self, saved: dict) -> List[str]:
        """Options in which this config differs from a saved one's ``to_dict()``, ignoring those a resume
        (or the reuse of a finished run) may change."""
        now = self.to_dict()
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}  # options added since
        return sorted(k for k in now if k not in RESUME_FREE and saved.get(k, defaults.get(k)) != now[k])

    def to_dict(self) -> dict:
        return asdict(self)
