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
@click.option("--max-side", type=int, default=None, help="Shrink photos so this side is at most N px.")
@click.option("--resize-side", type=click.Choice(["longer", "shorter"]), default="longer", show_default=True)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=90, show_default=True)
@click.option("--storage", type=click.Choice(["jpg", "raw"]), default=None,
              help="Override the dataset default (jpg for photos, raw/lossless for small images).")
@click.option("--workers", type=int, default=0, help="Encoding processes (0: all cores).")
@click.option("--per-shard", type=int, default=5000, show_default=True, help="Samples per tar shard.")
@click.option("--skip-corrupt", is_flag=True, help="Skip undecodable images (counted in the manifest).")
@click.option("--overwrite", is_flag=True, help="Replace an existing conversion in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def convert(dataset, root, out, formats, max_side, resize_side, jpeg_quality, storage, workers, per_shard,
            skip_corrupt, overwrite, quiet):
    """Convert a dataset from its official layout to FFCV .beton, DALI shards and a manifest."""
    from fastkd.converters.convert import ConvertOptions, convert as run

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("ffcv", "dali")]
    if bad or not fmts:
        raise UserError(f"unknown --formats {','.join(bad) or formats!r}; use ffcv, dali or ffcv,dali")
    opts = ConvertOptions(formats=fmts, max_side=max_side, resize_side=resize_side, jpeg_quality=jpeg_quality,
                          storage=storage, workers=workers, per_shard=per_shard, skip_corrupt=skip_corrupt,
                          overwrite=overwrite, progress=not quiet)
    manifest = run(dataset, root, out, opts)
    counts = ", ".join(f"{k} {v['count']}" for k, v in manifest["splits"].items())
    click.echo(f"converted {manifest['dataset']} -> {out}: {counts}; {manifest['num_classes']} classes; "
               f"formats {','.join(fmts)}")
