"""Everything a training run is configured by; saved as ``config.json`` beside the run.

Checked once, at construction (:meth:`TrainConfig.__post_init__`): a bad value is a one-line UserError
before any data is opened, never a failure at the first step."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from fastkd.errors import UserError

SCHEDULES = ("cosine", "step", "multistep", "constant")
INITS = ("default", "kaiming", "xavier")
AMP_MODES = ("off", "bf16", "fp16")

# options that do not change the numbers a run produces, so a resume may differ in them
RESUME_FREE = frozenset({"progress", "workers", "device", "eval_every", "backend", "checkpoint_every"})
CACHE_DTYPES = ("float16", "float32")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def method_option_rule(name: str, value) -> Optional[str]:
    """Why ``value`` is no valid value for a method option called ``name`` (None: it is), by the option's name,
    for every method: numbers finite, a temperature > 0, a loss weight (``weight``, ``*_weight``, ``alpha``,
    ``beta``, ``scale``) >= 0, ``eps`` / ``p`` > 0. Checked by :class:`TrainConfig` and ``parse_methods``."""
    if not _is_number(value):
        return None  # strings (taps, "auto"); parse_methods checks the type against the option's default
    if not math.isfinite(value):
        return "must be a finite number"
    if name in ("temperature", "eps", "p") and not value > 0:
        return "must be > 0"
    if (name in ("weight", "alpha", "beta", "scale") or name.endswith("_weight")) and value < 0:
        return "is a loss weight; give a value >= 0"
    return None


@dataclass
class TrainConfig:
    data: str
    out: str
    student: str
    teacher: Optional[str] = None
    teacher_weights: Optional[str] = None  # fastkd checkpoint or torchvision state dict (local file)
    teacher_cache: Optional[str] = None  # teacher-output cache folder (fastkd/cache): read where filled, else filled
    cache_dtype: str = "float16"  # float16 | float32 storage of cached signals
    cache_topk: int = 0  # > 0: cache only the top-k logits (FKD)
    cache_budget: float = 1e9  # bytes of feature maps a cache may hold (all epochs); logits/embeddings always
    method: str = "ce"
    method_options: Dict[str, Dict[str, object]] = field(default_factory=dict)
    ce_weight: Optional[float] = None  # None: the method's paper default
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | multistep | constant
    step_size: int = 30  # step: decay every step_size epochs
    milestones: List[int] = field(default_factory=list)  # multistep
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    # tricks (Bag of Tricks, He et al. 2019, and the seed's list); defaults leave them off
    init: str = "default"  # default | kaiming | xavier
    pretrained: Optional[str] = None  # local weights for the student (torchvision layout or fastkd checkpoint)
    no_bias_decay: bool = False
    label_smoothing: float = 0.0
    lr_scaling: bool = False  # lr = lr x (global batch) / 256
    dropout: float = 0.0  # before the classifier
    zero_gamma: bool = False
    amp: str = "off"  # off | bf16 | fp16 (autocast)
    channels_last: bool = True  # NHWC: faster convolutions on GPUs and on CPUs (README, 'Memory format')
    compile: bool = False
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all ranks (train/sync_bn.py)
    # data-side tricks, applied on the device to whole batches (pipelines/augment)
    views: bool = True  # crop + flip views; False: centre views only
    erasing: float = 0.0  # random erasing probability (Zhong et al.: 0.5)
    cutout: float = 0.0  # cutout square side as a fraction of the image side (DeVries & Taylor: 16/32 = 0.5)
    mixup: float = 0.0  # mixup Beta alpha (0: off)
    cutmix: float = 0.0  # cutmix Beta alpha (0: off)
    res: Optional[int] = None  # None: the dataset's default resolution
    backend: str = "torch"
    workers: int = 2
    train_split: str = "train"
    eval_split: Optional[str] = None  # None: "test" when the conversion has one, else "val"
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    checkpoint_every: float = 5.0  # minutes between checkpoints within an epoch; 0: at epoch ends only
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise UserError(f"--{option.replace('_', '-')} {getattr(self, option)!r} {rule}")

        def integer(option: str, least: int) -> None:
            v = getattr(self, option)
            need(_is_int(v) and v >= least, option, f"must be an integer >= {least}")

        def number(option: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
                   rule: str = "") -> None:
            v = getattr(self, option)
            ok = _is_number(v) and math.isfinite(v) and (v > low if low_open else v >= low) and (
                v < high if high_open else v <= high)
            if not rule:
                lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
                rule = (f"must be {'>' if low_open else '>='} {low:g}" if high == math.inf else f"must be in {lo}, {hi}")
                if not (_is_number(v) and math.isfinite(v)):
                    rule = "is not a finite number; it " + rule
            need(ok, option, rule)

        for option in ("epochs", "batch_size", "eval_every", "step_size"):
            integer(option, 1)
        for option in ("workers", "cache_topk", "seed"):
            integer(option, 0)
        number("lr", 0, low_open=True)
        number("momentum", 0, 1, high_open=True)
        for option in ("weight_decay", "warmup_epochs", "checkpoint_every", "mixup", "cutmix", "cache_budget"):
            number(option, 0)
        need(self.ce_weight is None or (_is_number(self.ce_weight) and math.isfinite(self.ce_weight)
                                        and self.ce_weight >= 0), "ce_weight", "must be a finite number >= 0")
        need(self.schedule in SCHEDULES, "schedule", f"is unknown; choose one of: {', '.join(SCHEDULES)}")
        need(self.cache_dtype in CACHE_DTYPES, "cache_dtype", f"is unknown; choose one of: {', '.join(CACHE_DTYPES)}")
        number("gamma", 0, low_open=True)
        need(self.schedule != "multistep" or bool(self.milestones), "milestones",
             "is empty; --schedule multistep needs epochs such as --milestones 150,180,210")
        need(isinstance(self.milestones, list) and all(_is_int(m) and 0 <= m <= self.epochs for m in self.milestones)
             and self.milestones == sorted(self.milestones),
             "milestones", f"must be epochs in 0..{self.epochs} (--epochs), in increasing order")
        need(self.warmup_epochs <= self.epochs, "warmup_epochs", f"must not exceed --epochs {self.epochs}")
        need(self.init in INITS, "init", f"is unknown; choose one of: {', '.join(INITS)}")
        need(self.amp in AMP_MODES, "amp", f"is unknown; choose one of: {', '.join(AMP_MODES)}")
        number("label_smoothing", 0, 1, high_open=True)
        number("dropout", 0, 1, high_open=True)
        number("erasing", 0, 1, rule="is a probability; give a value in [0, 1]")
        number("cutout", 0, 1, high_open=True, rule="is a fraction of the image side; give a value in [0, 1)")
        need(self.res is None or (_is_int(self.res) and self.res >= 8), "res", "must be at least 8 (pixels)")
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
        return sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])

    def to_dict(self) -> dict:
        return asdict(self)
