"""Training on cached activations: equivalence with the full model, both stages, the CLI and publish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_ARCH, TINY_SPEC, make_dataset, run, served
from pneumocam.config import TrainConfig
from pneumocam.images.data import scan_dataset
from pneumocam.images.readers import read_image
from pneumocam.model.network import backbone_layers, build_model
from pneumocam.reports.stress import CLEAN, PERTURBATIONS
from pneumocam.scoring.predictor import load_predictor
from pneumocam.training.activations import cut_layer_name, extract_activations, upper_model
from pneumocam.training.trainer import train_model


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    make_dataset(root, "download", per_class=10)
    return root


#: Both stages on three cached views, the fine-tuning at the head's rate: a step the consistency term can show in
#: three epochs (lr / 100 barely moves).
BASE = dict(epochs=1, batch_size=16, fine_tune_epochs=3, fine_tune_batch_size=8, copies=3, augment="acquisition")
BASE |= dict(fine_tune_lr_divisor=1.0)


@pytest.fixture(scope="module")
def plain(tiny_data: Path, tiny_backbone_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """One two-stage training without the consistency term, its activation cache kept: what the stage,
    determinism and consistency tests look at (each training costs a worker half a minute)."""
    cache = tmp_path_factory.mktemp("activations")
    scan = scan_dataset(tiny_data)
    result = train_model(scan, TrainConfig(**BASE), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file), cache, verbose=0)
    return result, cache


def test_cached_activations_reproduce_the_full_model(tiny_data: Path, tiny_backbone_file: Path) -> None:
    model = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    cut = cut_layer_name(model, 145)
    assert cut == backbone_layers(model)[144].name
    paths = [s.path for s in scan_dataset(tiny_data).samples[:5]]
    acts, skipped = extract_activations(served(model), paths, cut, copies=2, batch_size=2)
    assert acts.shape[:2] == (2, 5) and acts.dtype == np.float16 and not skipped
    x = np.stack([served(model).model_input(read_image(p)) for p in paths])
    direct = model(x, training=False).numpy()
    via_cache = upper_model(model, cut)(acts[0].astype(np.float32), training=False).numpy()
    assert np.abs(acts[0]).max() > 0.5  # realistic magnitudes, not underflowing float16
    np.testing.assert_allclose(via_cache, direct, atol=2e-3)
    assert np.abs(acts[0].astype(np.float32) - acts[1]).max() > 0.1  # the augmented view differs


def test_cut_across_a_residual_connection_is_refused() -> None:
    model = build_model(TINY_ARCH, TINY_SPEC, None)
    with pytest.raises(ValueError, match="block boundary"):
        upper_model(model, cut_layer_name(model, 142))


def test_two_stages_train_only_what_they_should(plain, tiny_backbone_file: Path) -> None:
    result, cache = plain
    reference = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    assert set(result.history) == {"baseline", "fine-tuning"}
    for h in result.history.values():
        assert {"loss", "val_loss", "accuracy", "precision", "recall", "auc", "val_auc"} <= set(h)
    assert len(result.history["fine-tuning"]["loss"]) == BASE["fine_tune_epochs"]
    val = result.meta.metrics["validation"]
    assert val["n_images"] == result.meta.data.n_val > 0
    assert result.meta.training.config["fine_tune_from"] == 145
    assert result.meta.training.class_weights is not None
    assert result.meta.training.config["augment"] == "acquisition"
    shift = result.meta.metrics["validation_shift"]
    assert list(shift["perturbations"]) == [CLEAN, *PERTURBATIONS]
    assert shift["perturbations"][CLEAN]["accuracy"] == pytest.approx(val["accuracy"], abs=1e-6)
    trained = result.model
    layers = backbone_layers(trained)
    frozen, tuned = layers[1], next(lay for lay in layers[145:] if lay.weights)
    np.testing.assert_array_equal(frozen.get_weights()[0], reference.get_layer(frozen.name).get_weights()[0])
    assert not np.allclose(tuned.get_weights()[0], reference.get_layer(tuned.name).get_weights()[0])
    assert len(list(cache.glob("activations-*.npz"))) == 2  # train views + validation, reused next time


def test_train_cli_writes_a_loadable_model_from_a_recipe_and_flags(
    tiny_data: Path, tiny_backbone_file: Path, tmp_path: Path
) -> None:
    import hashlib

    from pneumocam.reports.card import model_card

    recipe = tmp_path / "quick.json"
    # "views": the older name of "copies", as recipes written before the rename say it
    recipe.write_text(json.dumps({"train": {"epochs": 2, "views": 2, "batch_size": 16}, "arch": {"dropout": 0.3}}))
    out = tmp_path / "model"
    args = ["train", tiny_data, "--out", out, "--backbone-weights", tiny_backbone_file, "--width-multiplier", "0.35"]
    args += ["--image-size", "64", "--recipe", recipe, "--fine-tune-epochs", "1", "--dropout", "0.25"]
    result = run(*args)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.keras", "model.json", "history.json", "training_curves.png", "train.log", "source_stats.npz"]
        + ["validation.txt", "validity.npz"]
    )
    listed = (out / "validation.txt").read_text().splitlines()
    assert len(listed) == loaded_n_val(out) and all((tiny_data / f).is_file() for f in listed)
    trained = load_predictor(out)  # training fits the validity statistics: the threshold accepts 95 % of validation
    assert trained.validity_stats is not None and trained.meta.validity.validation["n_images"] == len(listed)
    assert trained.meta.validity.validation["accepted"] >= 0.95
    chosen = trained.meta.predict  # training chose the test-time views on its validation split, and serves them
    assert trained.views == chosen.views and len(chosen.choice["table"]) == 8
    assert f"test-time views (chosen on validation): {', '.join(chosen.views)}" in result.output
    assert trained.meta.metrics["validation_shift"]["max_changed_encoding"] is not None
    stress_out = tmp_path / "stress"
    stress = ["stress", tiny_data, "--model", out, "--subset", out / "validation.txt", "--out", stress_out]
    run(*stress, "--only", "jpeg-50")
    assert json.loads((stress_out / "stress.json").read_text())["n_images"] == len(listed)
    assert not out.with_name("model.partial").exists()
    loaded = load_predictor(out)
    assert loaded.meta.input.height == 64 and loaded.meta.arch.alpha == 0.35
    history = json.loads((out / "history.json").read_text())
    assert len(history["baseline"]["loss"]) <= 2 and len(history["fine-tuning"]["loss"]) == 1
    log = (out / "train.log").read_text()
    assert "stage head" in log and "stage fine_tuning" in log and '"seed": 42' in log
    training = loaded.meta.training  # the recipe file's settings, the command line's over them, both recorded
    assert training.config["epochs"] == 2 and training.config["copies"] == 2  # from the file
    assert training.config["fine_tune_epochs"] == 1 and loaded.meta.arch.dropout == 0.25  # the flags win
    assert training.recipe["name"] == str(recipe)
    assert training.recipe["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert training.recipe["overrides"]["arch"] == {"alpha": 0.35, "dropout": 0.25}
    assert f"recipe `{recipe}` with" in model_card(loaded.meta)
    again = run(*args, code=2)
    assert "--overwrite" in again.output
    recipe.write_text(json.dumps({"train": {"epoch": 1}}))
    refused = run(*args, "--overwrite", code=1)
    assert "unknown train setting(s) epoch" in refused.output and load_predictor(out).meta.training == training


def loaded_n_val(folder: Path) -> int:
    return load_predictor(folder).meta.data.n_val


def test_publish_dry_run_lists_exactly_the_model_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "pub"
    shutil.copytree(tiny_model_dir, folder)
    incomplete = run("publish", folder, "--repo-id", "me/x", "--dry-run", code=1)
    assert "README.md" in incomplete.stderr
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# card\n")
    (folder / "notes.txt").write_text("not uploaded")
    result = run("publish", folder, "--repo-id", "me/x", "--dry-run")
    listed = [line.split("\t")[0] for line in result.stdout.splitlines() if "\t" in line]
    assert sorted(listed) == ["README.md", "model.json", "model.keras", "validity.npz"]
    assert "dry run: 4 file(s)" in result.stdout


def test_model_card_front_matter_and_tables_follow_the_metadata() -> None:
    import yaml

    from pneumocam.model.artifact import read_meta
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR
    from pneumocam.reports.card import model_card

    meta = read_meta(DEFAULT_WEIGHTS_DIR)
    card = model_card(meta)
    front = card.split("---")[1]
    for key in (
        "license:",
        "library_name: keras",
        "pipeline_tag: image-classification",
        "tags:",
        "datasets:",
        "base_model:",
        "model-index:",
    ):
        assert key in front
    test = meta.metrics["test"]
    index = yaml.safe_load(front)["model-index"][0]
    assert index["name"] == meta.name
    figures = {m["name"]: m["value"] for m in index["results"][0]["metrics"]}
    assert figures["overall accuracy"] == round(test["accuracy"], 4)
    assert figures["VIRUS recall"] == round(test["per_class"]["VIRUS"]["recall"], 4)
    assert f"**{100 * test['accuracy']:.1f}**" in card
    row = " | ".join(str(v) for v in test["confusion_matrix"][2])
    assert f"| VIRUS | {row} |" in card
    assert "Not a medical device" in card and "| test split (624 images) | seed fine-tuned | train-only |" in card
    shift = meta.metrics["validation_shift"]
    assert "## Robustness" in card
    assert f"| **mean under perturbation** | **{100 * shift['mean_accuracy']:.1f}** |" in card
    assert meta.training.config["augment"] == "invariance"  # the published recipe's, in the card's words:
    assert "blur, gamma, contrast and noise changes; resampling filters, scale and JPEG quality" in card
    assert meta.training.config["views"] == 10 and "10 augmented copies per image" in card  # the older name
    for key in ("test", "test:site-adapted", "test:site-calibrated"):
        m = meta.metrics[key]
        lo, hi = m["ci95"]["per_class"]["VIRUS"]["precision"]
        assert f"{100 * m['per_class']['VIRUS']['precision']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in card
    assert "the test images themselves, labels unused" in card  # each protocol says what it did
    assert (DEFAULT_WEIGHTS_DIR / "README.md").read_text() == card


def test_a_failed_training_leaves_no_folder_and_no_log_handler(tiny_data: Path, tiny_backbone_file: Path, tmp_path):
    import logging

    out = tmp_path / "model"
    args = ["train", tiny_data, "--out", out, "--backbone-weights", tiny_backbone_file, "--width-multiplier", "0.35"]
    args += ["--image-size", "64", "--fine-tune-from", "142"]  # crosses a residual connection: refused in core
    result = run(*args, code=1)
    assert "block boundary" in result.output
    assert not out.exists() and not list(tmp_path.glob(".model.staging-*"))
    handlers = logging.getLogger("pneumocam").handlers
    assert not any(isinstance(h, logging.FileHandler) for h in handlers)


def test_the_shipped_recipes_are_the_seed_defaults_and_the_published_model() -> None:
    from pneumocam.config import ArchConfig, InputSpec
    from pneumocam.errors import InputError
    from pneumocam.model.artifact import read_meta
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR
    from pneumocam.training.recipe import PUBLISHED_RECIPE, SEED_RECIPE, available_recipes, load_recipe

    assert {PUBLISHED_RECIPE, SEED_RECIPE} <= set(available_recipes())
    seed = load_recipe(SEED_RECIPE)
    assert (seed.train, seed.arch, seed.input) == (TrainConfig(), ArchConfig(), InputSpec())
    published, meta = load_recipe(PUBLISHED_RECIPE), read_meta(DEFAULT_WEIGHTS_DIR)
    assert meta.training.recipe["name"] == PUBLISHED_RECIPE
    assert meta.training.recipe["sha256"] == published.sha256  # the file the model was trained from, unchanged
    # the recorded config, read through today's names ("views" is "copies" now)
    assert published.train == TrainConfig.from_dict(meta.training.config) and published.arch == meta.arch
    with pytest.raises(InputError, match="pneumocam, seed"):
        load_recipe("no-such-recipe")
    with pytest.raises(InputError, match="left PneumoCAM; load it at"):
        ArchConfig.from_dict({"standardize": True})
    assert ArchConfig.from_dict({"standardize": False, "blur": 0.0}) == ArchConfig()  # older files, options off


def test_training_twice_in_one_process_gives_the_same_model(plain, tiny_data: Path, tiny_backbone_file: Path) -> None:
    """Again, after other tests and whatever else the process did, without the activation cache: the same weights."""
    np.random.default_rng().random(3)
    build_model(TINY_ARCH, TINY_SPEC, None)
    scan = scan_dataset(tiny_data)
    again = train_model(scan, TrainConfig(**BASE), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file), verbose=0)
    for a, b in zip(plain[0].model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_consistency_loss_is_cross_entropy_plus_the_divergence_among_views() -> None:
    from pneumocam.training.consistency import consistency_loss

    y = np.array([[1.0, 0.0, 0.0]], np.float32)
    agree = np.array([[[0.7, 0.2, 0.1]] * 3], np.float32)
    differ = np.array([[[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]]], np.float32)
    loss = consistency_loss(10.0, 0.0, 3)
    assert float(loss(y, agree)[0]) == pytest.approx(-np.log(0.7), rel=1e-5)  # no divergence between equal views
    p = differ[0]
    m = p.mean(0)
    js = np.mean([np.sum(q * np.log(q / m)) for q in p])
    ce = -np.mean(np.log(p[:, 0]))
    assert float(loss(y, differ)[0]) == pytest.approx(ce + 10.0 * js, rel=1e-5)


def test_consistency_training_pulls_the_copies_of_an_image_together(
    plain, tiny_data: Path, tiny_backbone_file: Path, tmp_path: Path
) -> None:
    from pneumocam.training.trainer import train_to_folder

    scan = scan_dataset(tiny_data)
    out = tmp_path / "model"  # the whole folder, curves included: the two stages record different metrics
    result = train_to_folder(
        scan, out, TrainConfig(consistency=50.0, **BASE), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file)
    )
    assert (out / "training_curves.png").stat().st_size > 1000 and load_predictor(out).views[0] == "identity"
    assert result.meta.training.config["consistency"] == 50.0
    assert len(result.history["fine-tuning"]["loss"]) == 3 and "val_accuracy" in result.history["fine-tuning"]
    # The validity statistics training stored fit the model it saved: reloaded, they accept its validation images.
    reloaded = load_predictor(out)
    val = [tiny_data / f for f in (out / "validation.txt").read_text().split()]
    _, summaries = reloaded.summaries(val, reloaded.validity_stats.layer)
    accepted = float(np.mean(reloaded.validity_stats.scores(summaries) <= 1.0))
    assert accepted == pytest.approx(reloaded.meta.validity.validation["accepted"]) and accepted >= 0.95

    def spread(model) -> float:
        paths = [s.path for s in scan.samples]
        acts, _ = extract_activations(served(model), paths, "out_relu", copies=3, augment="acquisition")
        head = upper_model(model, "out_relu")
        probs = np.stack([head(a.astype(np.float32), training=False).numpy() for a in acts])
        return float(np.abs(probs - probs.mean(0)).mean())

    assert spread(result.model) < spread(plain[0].model)
    with pytest.raises(ValueError, match="at least 3 cached copies"):
        TrainConfig(consistency=1.0, copies=2)
