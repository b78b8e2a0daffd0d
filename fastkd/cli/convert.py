"""``fastkd convert``."""
from __future__ import annotations

import click

from fastkd.errors import UserError

from . import cli


@cli.command()
@click.option("--dataset", required=True, help="Dataset name (see `fastkd list datasets`).")
@click.option("--root", default=None, help="Folder holding the dataset in its official layout.")
@click.option("--out", required=True, help="Output folder (written atomically).")
@click.option("--formats", default="ffcv,dali", show_default=True, help="Comma list of ffcv, dali.")
@click.option("--max-side", type=click.IntRange(1), default=None, help="Shrink photos so this side is at most N px.")
@click.option("--resize-side", type=click.Choice(["longer", "shorter"]), default="longer", show_default=True)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True)
@click.option("--storage", type=click.Choice(["jpg", "raw"]), default=None,
              help="Override the dataset default (jpg for photos, raw/lossless for small images).")
@click.option("--val-fraction", type=float, default=0.0, show_default=True,
              help="Carve a seeded, class-stratified val split out of train (datasets without one).")
@click.option("--val-seed", type=int, default=0, show_default=True)
@click.option("--opt", "reader_opts", multiple=True, metavar="NAME=VALUE",
              help="Dataset reader option, e.g. --opt classes=imagenet100.txt (imagenet_subset), "
                   "--opt level=family (aircrafts), --opt crop_bbox=true (cars), --opt holdout=0.1 (vggface2).")
@click.option("--workers", type=click.IntRange(0), default=0, help="Encoding processes (0: all cores).")
@click.option("--per-shard", type=click.IntRange(1), default=5000, show_default=True, help="Samples per tar shard.")
@click.option("--skip-corrupt", is_flag=True, help="Skip undecodable images (counted in the manifest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing conversion in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def convert(dataset, root, out, formats, max_side, resize_side, jpeg_quality, storage, val_fraction, val_seed,
            reader_opts, workers, per_shard, skip_corrupt, overwrite, quiet):
    """Convert a dataset from its official layout to FFCV .beton, DALI shards and a manifest."""
    from fastkd.converters.convert import ConvertOptions, convert as run

    if not 0 <= val_fraction < 1:  # nan too
        raise UserError(f"--val-fraction {val_fraction} must be in [0, 1) (0: no val split carved)")
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("ffcv", "dali")]
    if bad or not fmts:
        raise UserError(f"unknown --formats {','.join(bad) or formats!r}; use ffcv, dali or ffcv,dali")
    opts = ConvertOptions(formats=fmts, max_side=max_side, resize_side=resize_side, jpeg_quality=jpeg_quality,
                          storage=storage, val_fraction=val_fraction, val_seed=val_seed, workers=workers,
                          per_shard=per_shard, skip_corrupt=skip_corrupt, overwrite=overwrite, progress=not quiet,
                          extra=_reader_options(dataset, reader_opts))
    manifest = run(dataset, root, out, opts)
    counts = ", ".join(f"{k} {v['count']}" for k, v in manifest["splits"].items())
    click.echo(f"converted {manifest['dataset']} -> {out}: {counts}; {manifest['num_classes']} classes; "
               f"formats {','.join(fmts)}")


def _reader_options(dataset: str, items) -> dict:
    """``("classes=list.txt", "crop_bbox=true")`` -> keyword options of the dataset's reader, checked."""
    import inspect
    import json

    from fastkd.converters import DATASETS

    read = DATASETS.get(dataset).read
    accepted = [p for p in inspect.signature(read).parameters if p != "root"]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--opt {item!r} is not NAME=VALUE")
        if key not in accepted:
            raise UserError(f"dataset {dataset} has no reader option {key!r}; its options: {', '.join(accepted) or 'none'}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
