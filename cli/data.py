"""``prepare-data``: the download layout as the seed's three class folders."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("prepare-data")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace the class folders of a non-empty DEST.")
def prepare_data(src: Path, dest: Path, overwrite: bool) -> None:
    """Lay out a download-layout folder (NORMAL/ PNEUMONIA/) as BACTERIA/ NORMAL/ VIRUS/.

    Files are hard-linked where possible (copied otherwise); bacteria/virus is read
    from the file names. Prints the counts per class and lists files whose class
    cannot be told (they are left out).

    \b
    Example:
      python -m cli prepare-data ~/Downloads/chest_xray/test data/test
    """
    from pneumocam.images.data import prepare_layout

    scan = prepare_layout(src, dest, overwrite=overwrite)
    for name, n in scan.counts().items():
        click.echo(f"{name:<9}{n:>6}")
    click.echo(f"{'total':<9}{len(scan.samples):>6}  -> {dest}")
    if scan.unlabeled:
        click.echo(f"{len(scan.unlabeled)} file(s) left out, class not in the name:", err=True)
        for p in scan.unlabeled:
            click.echo(f"  {p}", err=True)
