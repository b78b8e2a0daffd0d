"""What each distillation method costs per step on one (teacher, student, resolution, batch), against the student
alone (``fastkd bench methods``): the cost a grid pays per cell, method by method, with the teacher's forward taken
away as the teacher cache takes it away.

Per method (``ce`` first, the student alone): a fresh student (seed 0), the method's adapters built as ``fastkd
train`` builds them (:func:`fastkd.train.signals.prepare_methods`), the method set to its main stage (the one that
trains the student for the rest of a run: FitNets after its hint stage, DKD after its warm-up), and the teacher's
signals of one batch computed once beforehand (what a cache read hands the step; for a method that expands the
batch, on its copies). A timed step is what the trainer's step is: the student's forward with the taps the method
reads, the method's terms plus cross-entropy, backward, and an SGD step over the student and the adapters; on a GPU
it is synchronised. ``--warmup`` steps are not timed; a row reports the median of ``--steps`` steps.

Reported per method: ms per step, the ratio to ``ce``'s, images/s, the adapters' parameters, the loss terms it
emits in its main stage (none for AB and FSP, whose work is their first stage: their rows cost what ``ce`` costs)
and the first and last steps' losses; a method that cannot pair these two networks gets its one-line reason instead.
Before the first row, ``--warmup`` untimed steps of ``ce`` take the process's one-time costs; ``ce`` is timed
first and last, and its row is the median of both runs' steps, so that a drift of the machine over the run does not
fall on one side of the ratios only.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from fastkd.atomic import atomic_write_json
from fastkd.errors import UserError
from fastkd.log import log
from fastkd.tables import format_table

from .machine import machine_info

MAIN_STAGE = 10**6  # an epoch past every method's warm-up and exclusive first stage
HEADERS = ["method", "ms/step", "x ce", "images/s", "adapter params", "terms"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network(name: str, classes: int, res: int, low_res: bool, device: torch.device, channels_last: bool):
    """``name`` random-initialised from seed 0, on ``device``."""
    from fastkd.models import create_model

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    return create_model(name, classes, low_res, res=res).to(device, memory_format=fmt)


def time_method(name: str, teacher: torch.nn.Module, student: str, *, res: int, low_res: bool, batch_size: int,
                classes: int = 10, steps: int = 10, warmup: int = 2, device: str = "cpu", channels_last: bool = True,
                options: Optional[dict] = None) -> dict:
    """One row: ``name`` (a method spec, ``ce`` for the student alone; ``options``: ``{method: {option: value}}``
    as ``--opt`` gives them) on a fresh ``student`` and the ``teacher`` network (in eval mode; see the module
    doc)."""
    from fastkd.methods import parse_methods
    from fastkd.train.signals import prepare_methods

    dev = torch.device(device)
    t_net, s_net = teacher, _network(student, classes, res, low_res, dev, channels_last).train()
    methods = [] if name == "ce" else parse_methods(name, options)
    try:
        s_sig, t_sig = prepare_methods(methods, s_net, t_net, res, dataset_size=max(batch_size, 1024))
    except UserError as exc:
        return {"method": name, "error": str(exc)}
    try:
        times, losses, terms = _steps(methods, s_net, s_sig, t_sig, batch_size, res, classes, steps, warmup, dev,
                                      channels_last)
    finally:  # the teacher serves the next row: no hook of this one stays on it
        s_sig.close()
        t_sig.close()
    ms = statistics.median(times) * 1000
    return {"method": name, "ms_per_step": ms, "step_ms": [t * 1000 for t in times],
            "images_per_s": batch_size / ms * 1000,
            "adapter_params": sum(p.numel() for m in methods for p in m.parameters() if p.requires_grad),
            "terms": terms, "staged": any(m.has_stages() for m in methods), "first_loss": losses[0],
            "last_loss": losses[-1]}


def _steps(methods, s_net, s_sig, t_sig, batch_size, res, classes, steps, warmup, dev, channels_last):
    """The timed steps of one row: (seconds of each step after ``warmup``, every step's loss, the terms)."""
    from fastkd.train.signals import expanded_batch, method_terms

    for m in methods:
        m.set_epoch(MAIN_STAGE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, res, res, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch_size,), generator=g).to(dev)
    index = torch.arange(batch_size, device=dev)
    inputs, expander = expanded_batch(methods, x)
    with torch.no_grad():
        t = t_sig(inputs)  # the teacher's signals of the batch, as the cache hands them
    adapters = [p for m in methods for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(list(s_net.parameters()) + adapters, lr=0.01, momentum=0.9)
    times, losses, terms = [], [], []
    for i in range(warmup + steps):
        _sync(dev)
        start = time.perf_counter()
        s = s_sig(inputs)
        parts = method_terms(methods, s, t, batch_size, expander, labels, index)
        loss = F.cross_entropy(s["logits"][:batch_size], labels) + sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        terms = sorted(parts)
    return times, losses, terms


def run_methods_bench(teacher: str, student: str, methods: Sequence[str], *, res: int, batch_size: int,
                      classes: int = 10, steps: int = 10, warmup: int = 2, device: str = "cpu",
                      channels_last: bool = True, options: Optional[dict] = None, progress: bool = True) -> List[dict]:
    """``ce`` then every method of ``methods``, each a row of :func:`time_method`, then ``ce`` again (its row: the
    median of both runs' steps), with ``x_ce`` (a row's ms/step over ``ce``'s). Unknown names, networks that
    cannot take ``res`` px and a device that is not there are one-line errors before anything is timed."""
    import tempfile

    from fastkd.methods import parse_methods
    from fastkd.pipelines.view_policy import ViewPolicy

    from .kd import check_pair, resolve_device

    if min(res, batch_size, steps) < 1 or warmup < 0:
        raise UserError("--res, --batch-size and --steps must be >= 1, --warmup >= 0")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA GPU is visible; use --device cpu")
    names = ["ce", *dict.fromkeys(m for m in methods if m != "ce")]
    for name in names[1:]:
        parse_methods(name, options)  # an unknown method or option: its one-line error now
    low_res = ViewPolicy.for_resolution(res, True).kind == "pad_crop"
    with tempfile.TemporaryDirectory(prefix="fastkd-bench-methods-") as tmp:
        check_pair(teacher, student, None, classes, low_res, res, tmp)
    t_net = _network(teacher, classes, res, low_res, dev, channels_last).eval()  # one teacher for every row
    common = dict(res=res, low_res=low_res, batch_size=batch_size, classes=classes, warmup=warmup, device=str(dev),
                  channels_last=channels_last)
    if warmup:  # the process's one-time costs (allocator, kernel selection) before the first timed row
        time_method("ce", t_net, student, steps=1, **common)
    rows = []
    for i, name in enumerate(names):
        row = time_method(name, t_net, student, steps=steps, options=options, **common)
        rows.append(row)
        if progress:
            what = f"{row['ms_per_step']:.1f} ms/step" if "ms_per_step" in row else f"not paired: {row['error']}"
            log(f"[bench methods] {i + 1}/{len(names)} {name}: {what}")
    if len(rows) > 1:  # ce again at the end: the machine's drift over the run falls on both sides of the ratio
        again = time_method("ce", t_net, student, steps=steps, **common)
        ce = rows[0]
        ce["step_ms"] += again["step_ms"]
        ce["ms_per_step"] = statistics.median(ce["step_ms"])
        ce["images_per_s"] = batch_size / ce["ms_per_step"] * 1000
    for row in rows:
        if "ms_per_step" in row:
            row["x_ce"] = row["ms_per_step"] / rows[0]["ms_per_step"]
    return rows


def table(rows) -> str:
    def terms(r):
        return "+".join(r["terms"]) or ("none after its first stage" if r["staged"] else "")

    body = [[r["method"], r["ms_per_step"], r["x_ce"], r["images_per_s"], r["adapter_params"], terms(r)]
            if "ms_per_step" in r else [r["method"], None, None, None, None, f"not paired: {r['error']}"] for r in rows]
    return format_table(HEADERS, body, markdown=True)


def save(path: Optional[str], rows, settings: dict, device: str) -> dict:
    doc = {"machine": machine_info(device), "settings": settings, "rows": rows, "table": table(rows)}
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_json(path, doc)
    return doc
