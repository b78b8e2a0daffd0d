"""``fastkd bench loader``: backend throughput against a plain torchvision DataLoader."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli
from .options import RegistryOption, memory_limit_option


@cli.group()
def bench():
    """Throughput benchmarks (each prints a table and writes JSON)."""


@bench.command()
@click.option("--data", default=None, help="A folder written by `fastkd convert` (default: --photos generated photos).")
@click.option("--photos", type=click.IntRange(16), default=1000, show_default=True,
              help="Without --data: generate this many 360-640 px JPEG photos and convert them first.")
@click.option("--backends", default="ffcv,dali,torch,memory", show_default=True, cls=RegistryOption,
              registry="fastkd.pipelines:BACKENDS",
              help="Comma list of backends to time (memory: decodes the split once when built, its build s in the "
                   "table; skipped when the split does not fit its limit).")
@memory_limit_option()
@click.option("--references", default="ffcv-own,dali-own", show_default=True,
              help="FFCV's and DALI's own RandomResizedCrop pipelines to time beside fastkd's backends (res > 64; "
                   "empty: none).")
@click.option("--split", default="train", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True)
@click.option("--res", type=int, default=None, help="Resolution (default: the dataset's).")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True, help="Timed epochs.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_json", default="benchmarks/results/loader.json", show_default=True, help="JSON output.")
def loader(data, photos, backends, references, split, batch_size, workers, res, epochs, warmup_epochs, device,
           out_json):
    """images/s of each backend vs ImageFolder + DataLoader on the same images and augmentation, and a
    decode-only row (full decode of every image, same workers)."""
    import tempfile

    from fastkd.bench.loader import REFERENCES, run_loader_bench
    from fastkd.bench.photos import converted_photo_set
    from fastkd.pipelines import BACKENDS, open_converted

    names = tuple(BACKENDS.canonical(b.strip()) for b in backends.split(",") if b.strip())
    refs = tuple(r.strip() for r in references.split(",") if r.strip())
    unknown = [r for r in refs if r not in REFERENCES]
    if unknown:
        raise UserError(f"unknown --references {', '.join(unknown)}; choose from {', '.join(REFERENCES)}")
    if not names:
        raise UserError("--backends is empty; give e.g. ffcv,dali,torch")
    with tempfile.TemporaryDirectory(prefix="fastkd-photos-") as tmp:
        data = data or converted_photo_set(tmp, photos)
        open_converted(data)
        run_loader_bench(data, backends=names, split=split, batch_size=batch_size, workers=workers, res=res,
                         epochs=epochs, warmup_epochs=warmup_epochs, device=device, out_json=out_json,
                         references=refs)
