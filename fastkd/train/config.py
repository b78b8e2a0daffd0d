"""Everything a training run is configured by; saved as ``config.json`` beside the run.

Checked once, at construction (:meth:`TrainConfig.__post_init__`): a bad value is a one-line UserError
before any data is opened, never a failure at the first step."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from fastkd.errors import UserError

SCHEDULES = ("cosine", "step", "multistep", "constant")
INITS = ("default", "kaiming", "xavier")
AMP_MODES = ("off", "bf16", "fp16")

# options that do not change the numbers a run produces, so a resume may differ in them
RESUME_FREE = frozenset({"progress", "workers", "device", "eval_every", "backend", "checkpoint_every"})


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

        for option in ("epochs", "batch_size", "eval_every"):
            need(isinstance(getattr(self, option), int) and getattr(self, option) >= 1, option, "must be an integer >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        for option in ("weight_decay", "warmup_epochs", "checkpoint_every", "mixup", "cutmix", "workers"):
            need(getattr(self, option) >= 0, option, "must be >= 0")
        need(self.ce_weight is None or self.ce_weight >= 0, "ce_weight", "must be >= 0")
        need(self.schedule in SCHEDULES, "schedule", f"is unknown; choose one of: {', '.join(SCHEDULES)}")
        need(self.gamma > 0, "gamma", "must be > 0")
        need(self.schedule != "step" or self.step_size >= 1, "step_size", "must be >= 1 with --schedule step")
        need(self.schedule != "multistep" or bool(self.milestones), "milestones",
             "is empty; --schedule multistep needs epochs such as --milestones 150,180,210")
        need(all(0 <= m <= self.epochs for m in self.milestones) and self.milestones == sorted(self.milestones),
             "milestones", f"must be epochs in 0..{self.epochs} (--epochs), in increasing order")
        need(self.warmup_epochs <= self.epochs, "warmup_epochs", f"must not exceed --epochs {self.epochs}")
        need(self.init in INITS, "init", f"is unknown; choose one of: {', '.join(INITS)}")
        need(self.amp in AMP_MODES, "amp", f"is unknown; choose one of: {', '.join(AMP_MODES)}")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        need(0 <= self.erasing <= 1, "erasing", "is a probability; give a value in [0, 1]")
        need(0 <= self.cutout < 1, "cutout", "is a fraction of the image side; give a value in [0, 1)")
        need(self.res is None or self.res >= 8, "res", "must be at least 8 (pixels)")

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
