"""The composition root: everything a run is made of, built from one :class:`TrainConfig` in one place.

``build_run(cfg)`` is what ``fastkd train`` (the :class:`~fastkd.train.trainer.Trainer`), ``fastkd cache
build`` (:mod:`fastkd.train.cache_fill`), ``fastkd eval``, the grid's teacher evaluation and, through
``train``, ``compare``, ``ablate``, the demo and the benchmarks use. The training loader and the teacher's
signal source are built here and nowhere else, so the views a cache is filled with and the views a
student trains on come from the same construction, and the cache key is computed from the loader and the
teacher built here.

Construction order is part of the result: the student draws its initialisation from the global RNG
(seeded first), then the methods' adapters; the teacher is built under a forked RNG, so a run draws the
same numbers whether its teacher runs online, comes from a cache or fills one.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional

import torch
from torch import nn

from fastkd.errors import UserError
from fastkd.log import log
from fastkd.methods import Method, parse_methods
from fastkd.models import create_model, model_taps
from fastkd.pipelines import ConvertedData, Loader, open_converted

from . import checkpoint, distributed, sync_bn, tricks
from .config import TrainConfig
from .signals import SignalModel, check_expanders, prepare_methods
from .teacher import TeacherSource, teacher_network

PURPOSES = ("train", "cache", "eval")


@dataclass
class Run:
    """The parts of one run. ``purpose`` says which are built:

    - ``train``: all of them;
    - ``cache`` (``fastkd cache build``): the training loader (every sample: no dropped last batch), the
      methods (taps paired teacher-with-itself) and the teacher source; no student, eval loader or optimiser;
    - ``eval``: the evaluation loader only (the network comes from a weights file: :func:`evaluate_weights`).
    """

    cfg: TrainConfig
    purpose: str
    dist: distributed.Dist
    device: torch.device
    data: ConvertedData
    eval_split: str  # --eval-split, else "test" when the conversion has one, else "val"
    train_loader: Optional[Loader] = None
    eval_loader: Optional[Loader] = None
    methods: List[Method] = field(default_factory=list)
    student: Optional[nn.Module] = None  # on the device, in the run's memory format (not DDP-wrapped)
    student_signals: Optional[SignalModel] = None  # the student's forward pass with the methods' taps
    teacher: Optional[nn.Module] = None  # frozen; on the meta device while a cache may serve every signal
    teacher_source: Optional[TeacherSource] = None  # online, cached or filling (None: no method needs a teacher)
    optimizer: Optional[torch.optim.Optimizer] = None  # SGD over the student's and the methods' parameters

    def close(self) -> None:
        if self.student_signals is not None:
            self.student_signals.close()
        if self.teacher_source is not None:
            self.teacher_source.close()


def eval_split_of(cfg: TrainConfig, data: ConvertedData) -> str:
    return cfg.eval_split or ("test" if "test" in data.splits() else "val")


def build_run(cfg: TrainConfig, purpose: str = "train", shared: Optional[Run] = None) -> Run:
    """Build the parts of run ``cfg`` that ``purpose`` (one of :data:`PURPOSES`) needs; see :class:`Run`.
    Under torchrun every rank calls it (the process group is set up here). ``shared``: a training run whose
    data and loaders this one uses instead of opening its own (a one-pass row: the caller checked that the two
    configurations make the same loaders); the loaders draw nothing from the global RNG, so the student and
    the adapters start from the same numbers either way."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    dist = distributed.init(cfg.device)
    device = distributed.resolve_device(cfg.device, dist)
    checkpoint.seed_everything(cfg.seed)
    if shared is not None:
        if purpose != "train" or shared.purpose != "train":
            raise ValueError("only training runs share their loaders")
        run = Run(cfg, purpose, dist, device, shared.data, shared.eval_split, shared.train_loader, shared.eval_loader)
        run.methods = parse_methods(cfg.method, cfg.method_options)
        _build_training_side(run)
        return run
    data = open_converted(cfg.data)
    run = Run(cfg, purpose, dist, device, data, eval_split_of(cfg, data))
    common = dict(backend=cfg.backend, batch_size=cfg.batch_size, res=cfg.res, seed=cfg.seed, workers=cfg.workers,
                  device=device, rank=dist.rank, world=dist.world, channels_last=cfg.channels_last)
    if purpose == "eval":
        run.eval_loader = Loader(data, run.eval_split, train=False, **common)
        return run
    splits = (cfg.train_split, run.eval_split) if purpose == "train" else (cfg.train_split,)
    for split in splits:
        data.split(split)  # a missing split stops the run before any loader decodes a whole split
    run.train_loader = Loader(data, cfg.train_split, train=True, views=cfg.views, augment=cfg.augment_config(),
                              drop_last=None if purpose == "train" else False, views_per_image=cfg.views_per_image,
                              **common)
    if purpose == "train":
        run.eval_loader = Loader(data, run.eval_split, train=False, **common)
        if len(run.train_loader) == 0:
            raise UserError(f"--batch-size {cfg.batch_size} exceeds the {run.train_loader.count} training samples; "
                            "lower it")
    run.methods = parse_methods(cfg.method, cfg.method_options)
    if purpose == "cache":
        _build_cache_side(run)
    else:
        _build_training_side(run)
    return run


def _memory_format(cfg: TrainConfig):
    return torch.channels_last if cfg.channels_last else torch.preserve_format


def online_only(methods, cfg: TrainConfig, main: bool) -> TrainConfig:
    """``cfg`` for the teacher's side: without ``--teacher-cache`` when a method needs a teacher forward that a
    cache cannot replay (:attr:`Method.cacheable` False: the teacher on copies of the batch the method makes),
    with one line saying so."""
    online = [m.name for m in methods if not m.cacheable]
    if not (online and cfg.teacher_cache):
        return cfg
    if main:
        log(f"--teacher-cache {cfg.teacher_cache} is not used: method {', '.join(online)} runs the teacher on "
            "copies of the batch it makes, which a cache cannot hold, so the teacher runs online")
    return replace(cfg, teacher_cache=None)


def check_stage_lengths(methods, epochs: int) -> None:
    """A method whose exclusive first stage (hints, a paraphraser, a teacher-side head) would last every epoch of
    the run is a one-line error: the student would never train with its labels."""
    for m in methods:
        if not m.has_stages():
            continue
        exclusive = []
        for epoch in range(epochs):
            m.set_epoch(epoch)
            exclusive.append(m.exclusive)
        if all(exclusive):
            stage = ", ".join(f"{m.name}.{k}={v}" for k, v in m.options().items() if k.endswith("epochs"))
            raise UserError(f"--method {m.name}: its first stage ({stage}) lasts all {epochs} epochs of the run, so the "
                            f"student never trains on its labels; raise --epochs or lower it with --opt")


def _build_training_side(run: Run) -> None:
    cfg, loader = run.cfg, run.train_loader
    needs = set().union(*(m.needs for m in run.methods))
    check_expanders(run.methods)
    run.student = build_student(cfg, run.data.num_classes, loader.low_res, run.device, run.dist.main, loader.res)
    teacher_cfg = online_only(run.methods, cfg, run.dist.main) if needs else cfg
    if needs:
        run.teacher = teacher_network(teacher_cfg, run.data.num_classes, loader.low_res, run.device, loader.res)
        run.teacher = run.teacher.to(memory_format=_memory_format(cfg))
    elif cfg.teacher or cfg.teacher_weights:
        raise UserError(f"--method {cfg.method} uses no teacher; drop --teacher/--teacher-weights or pick "
                        "a distillation method such as --method kd")
    run.student_signals, teacher_signals = prepare_methods(run.methods, run.student, run.teacher, loader.policy.out,
                                                           loader.count)
    check_stage_lengths(run.methods, cfg.epochs)  # after setup: stages may freeze the adapters it built
    if cfg.sync_bn:  # the adapters' BatchNorms too (regressors, connectors, fusion modules): the global batch's statistics
        for m in run.methods:
            sync_bn.convert(m, run.device)
    if teacher_signals is not None:  # online, or read from / written to --teacher-cache
        run.teacher_source = TeacherSource(teacher_signals, teacher_cfg, loader, run.dist, run.device)
    extra = [p for m in run.methods for p in m.parameters()]
    groups = tricks.param_groups(run.student, extra, cfg.weight_decay, cfg.no_bias_decay,
                                 head=getattr(run.student, "fastkd_new_head", ()), body_lr_scale=cfg.body_lr_scale)
    run.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _build_cache_side(run: Run) -> None:
    cfg, loader = run.cfg, run.train_loader
    online = [m.name for m in run.methods if not m.cacheable]
    if online:
        raise UserError(f"method {', '.join(online)} cannot be served by a teacher cache (it runs the teacher on "
                        "copies of the batch it makes); train it without --teacher-cache: the teacher runs online")
    run.teacher = teacher_network(cfg, run.data.num_classes, loader.low_res, run.device, loader.res)
    taps = model_taps(run.teacher)
    for m in run.methods:  # pair-dependent taps (overhaul's stages=auto) as for a student of the same family
        m.select_taps(taps, taps)
    needs = set().union(*(m.needs for m in run.methods))
    run.teacher_source = TeacherSource(SignalModel(run.teacher, needs), cfg, loader, run.dist, run.device)


def build_student(cfg: TrainConfig, num_classes: int, low_res: bool, device: torch.device,
                  report: bool = True, res: Optional[int] = None) -> nn.Module:
    """The student of ``cfg``: its architecture, initialisation tricks, pretrained weights and dropout, on
    ``device`` in the run's memory format (SyncBatchNorm under ``--sync-bn``)."""
    student = create_model(cfg.student, num_classes, low_res, res=res)  # res: zoo models' input side
    tricks.initialise(student, cfg.init)
    if cfg.zero_gamma:
        tricks.zero_gamma(student)
    head = _load_pretrained(student, cfg, num_classes, report) if cfg.pretrained else ()
    if cfg.dropout:
        tricks.add_dropout(student, cfg.dropout)
    student = student.to(device, memory_format=_memory_format(cfg))
    student = sync_bn.convert(student, device) if cfg.sync_bn else student
    student.fastkd_new_head = head  # parameter names of a classifier replaced for fine-tuning (at --lr)
    return student


def _load_pretrained(student: nn.Module, cfg: TrainConfig, num_classes: int, report: bool) -> tuple:
    """``--pretrained`` into ``student``, one line per tensor group left at its initialisation and one for
    ``--body-lr-scale``; returns the names of the new head's parameters."""
    from .weights import load_pretrained

    fit = load_pretrained(student, cfg.pretrained, num_classes)
    scale = cfg.body_lr_scale
    if report and fit.head:
        log(f"--pretrained {cfg.pretrained}: classifier {fit.head_module} ({fit.head_classes} classes) replaced by a "
            f"new {num_classes}-class head")
    if report and fit.stem:
        log(f"--pretrained {cfg.pretrained}: the stem {fit.stem[0].rsplit('.', 1)[0]} keeps its initialisation "
            "(this low-resolution stem has another kernel size than the file's)")
    if report and scale != 1.0:
        log(f"--body-lr-scale {scale}: the pretrained body trains at {scale} x --lr, the new head "
            f"{fit.head_module} at --lr" if fit.head else
            f"--body-lr-scale {scale}: no head was replaced, so every student parameter trains at {scale} x --lr")
    return tuple(fit.head)


def evaluate_weights(cfg: TrainConfig, weights: str) -> dict:
    """Top-1/top-5 (and loss, count) of the weights file ``weights`` (a fastkd checkpoint, whose architecture
    and stem it names, or a state dict for ``cfg.student``) on the run's evaluation split: ``fastkd eval`` and
    a grid's teacher brought with ``--teacher-weights``."""
    from .evaluate import evaluate
    from .weights import build_teacher

    run = build_run(cfg, "eval")
    model = build_teacher(cfg.student, weights, run.data.num_classes, run.eval_loader.low_res,
                          res=run.eval_loader.res)
    return {"split": run.eval_split, **evaluate(model.to(run.device), run.eval_loader)}


def config_for_eval(data: str, weights_cfg: dict, **options) -> TrainConfig:
    """A TrainConfig that evaluates on ``data`` with the saved run's resolution (``weights_cfg``: a
    checkpoint's ``res`` and ``model_name``) and the given loader ``options``."""
    return replace(TrainConfig(data=data, out="", student=weights_cfg["model_name"]), res=weights_cfg["res"],
                   **options)

