"""``model-card``, ``publish`` and ``deploy-space``: the Hugging Face side."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("model-card")
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
def model_card_cmd(model_dir: Path) -> None:
    """Write MODEL_DIR/README.md, the Hugging Face model card, from its model.json.

    Run it after `evaluate --record-as test` so the card carries the test figures.

    \b
    Example:
      python -m cli model-card weights/
    """
    from pneumocam.atomic import write_text
    from pneumocam.model.artifact import read_meta
    from pneumocam.reports.card import model_card

    path = write_text(model_dir / "README.md", model_card(read_meta(model_dir)))
    click.echo(f"model card written to {path}")


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--repo-id", required=True, help="Target model repo, e.g. org/pneumocam (created when missing).")
@click.option("--message", "--revision-message", "message", default="", help="Commit message on the Hub.")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--dry-run", is_flag=True, help="Check the model and list what would be uploaded; upload nothing.")
def publish(folder: Path, repo_id: str, message: str, private: bool, dry_run: bool) -> None:
    """Upload a model folder (model.keras, model.json, model card...) to the Hugging Face Hub.

    The model is loaded first (safe mode, SHA-256 and metadata checked), so a
    broken model is never published. Prints the commit hash to pin in the Space
    (PNEUMOCAM_REVISION). Needs network and a token (HF_TOKEN or
    `hf auth login`).

    \b
    Example:
      python -m cli publish weights/ --repo-id org/pneumocam --dry-run
      python -m cli publish weights/ --repo-id org/pneumocam --message "fine-tuned, 3 views"
    """
    from pneumocam.deploy.publish import model_files, upload
    from pneumocam.model.artifact import load_artifact

    files = model_files(folder)
    load_artifact(folder)
    if dry_run:
        for f in files:
            click.echo(f"{f.relative_to(folder).as_posix()}\t{f.stat().st_size:,} bytes")
        click.echo(f"dry run: {len(files)} file(s) would be uploaded to {repo_id}")
        return
    pairs = [(f, f.relative_to(folder).as_posix()) for f in files]
    commit = upload(pairs, repo_id, "model", message, private=private)
    click.echo(commit)
    click.echo(f"uploaded {len(files)} file(s) to {repo_id}; pin revision {commit}", err=True)


@click.command("deploy-space")
@click.option("--space-id", required=True, help="Target Space, e.g. org/pneumocam (created when missing).")
@click.option("--message", default="", help="Commit message on the Hub.")
@click.option("--dry-run", is_flag=True, help="List the files that would be uploaded; upload nothing.")
@click.option("--with-weights", is_flag=True, help="Also upload weights/, for a Space without a pinned Hub model.")
def deploy_space(space_id: str, message: str, dry_run: bool, with_weights: bool) -> None:
    """Upload the Gradio Space: core/, space/app.py, config and examples, requirements.txt, the Space card.

    The Space pulls its model from the Hub repo and revision pinned in
    space/config.json (set them after `publish`); without a pinned revision it
    is refused, unless --with-weights uploads weights/ for the Space to serve.
    Needs network and a token (HF_TOKEN or `hf auth login`).

    \b
    Example:
      python -m cli deploy-space --space-id org/pneumocam --dry-run
      python -m cli deploy-space --space-id org/pneumocam --with-weights
    """
    from pneumocam.deploy.publish import space_files, upload

    pairs = space_files(with_weights=with_weights)
    model = "weights/ uploaded with it" if with_weights else "the Hub model pinned in space/config.json"
    if dry_run:
        for local, name in pairs:
            click.echo(f"{name}\t{local.stat().st_size:,} bytes")
        click.echo(f"dry run: {len(pairs)} file(s) would be uploaded to Space {space_id}; it would serve {model}")
        return
    commit = upload(pairs, space_id, "space", message, space_sdk="gradio")
    click.echo(commit)
    click.echo(f"uploaded {len(pairs)} file(s) to Space {space_id}", err=True)
