"""``fastkd eval`` of an exported file: the same evaluation views and metrics as for a checkpoint."""
from __future__ import annotations

from fastkd.errors import UserError
from fastkd.pipelines import open_converted
from fastkd.train.build import build_run, config_for_eval
from fastkd.train.evaluate import evaluate

from .recognise import Exported
from .runtime import load_exported


def evaluate_export(exported: Exported, data: str, **options) -> dict:
    """Top-1/top-5, loss and count of ``exported`` on ``data``'s evaluation split, built from the loader
    ``options`` (``eval_split``, ``backend``, ``batch_size``, ``workers``, ``device``) at the export's input side."""
    meta = exported.meta
    converted = open_converted(data)
    if converted.num_classes != int(meta["num_classes"]):
        raise UserError(f"{exported.path} predicts {meta['num_classes']} classes but {data} has "
                        f"{converted.num_classes}; evaluate on the dataset it was trained on")
    cfg = config_for_eval(data, {"model_name": meta["model_name"], "res": int(meta["res"])}, **options)
    run = build_run(cfg, "eval")
    try:
        model = load_exported(exported.format, exported.path, meta, run.device)
        return {"split": run.eval_split, **evaluate(model, run.eval_loader)}
    finally:
        run.close()
