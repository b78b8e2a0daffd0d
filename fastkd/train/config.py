"""Everything a training run is configured by; saved as ``config.json`` beside the run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional


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
    channels_last: bool = False
    compile: bool = False
    # data-side tricks, applied on the device to whole batches (pipelines/augment)
    augment: bool = True  # crop + flip views; False: centre views only
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
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)
