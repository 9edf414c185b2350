"""Weight-space ensembles: the interpolation itself, and training that picks the share on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.app import main
from conftest import TINY_ARCH, TINY_SPEC, make_dataset
from core.config import TrainConfig
from core.data import scan_dataset
from core.errors import InputError
from core.model import backbone_layers, build_model
from core.stress import selection_score
from core.training import train_model
from core.weight_space import check_alphas, interpolate_weights


def test_interpolation_runs_from_one_checkpoint_to_the_other(tiny_backbone_file: Path) -> None:
    start_model = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    weights = start_model.get_weights()
    counter = np.array([3, 9], np.int64)  # a counter, as a random layer's seed state is
    start, end = [*weights, counter], [*(w + 1.0 for w in weights), counter + 7]
    for alpha in (0.0, 0.25, 1.0):
        mixed = interpolate_weights(start, end, alpha)
        for s, e, m in zip(start, end, mixed):
            assert m.dtype == e.dtype and m.shape == e.shape
            expected = s + alpha if np.issubdtype(s.dtype, np.floating) else e
            np.testing.assert_allclose(m, expected, rtol=1e-6, atol=1e-6)
    start_model.set_weights(interpolate_weights(start, end, 0.5)[:-1])  # a model takes them back
    with pytest.raises(ValueError, match="differ"):
        interpolate_weights(start, end[:-1], 0.5)


@pytest.mark.parametrize("alphas", [(), (1.5,), (-0.1, 1.0), (0.5, 0.5)])
def test_bad_shares_are_refused(alphas: tuple[float, ...]) -> None:
    with pytest.raises(InputError):
        check_alphas(alphas)
    with pytest.raises(InputError):
        TrainConfig(wise_ft=alphas)


def test_no_ensemble_without_a_fine_tuning_stage() -> None:
    with pytest.raises(InputError, match="fine-tuning stage"):
        TrainConfig(fine_tune_from=None, wise_ft=(0.5, 1.0))
    assert TrainConfig(fine_tune_from=None).wise_ft == (1.0,)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wise_data")
    make_dataset(root, "download", per_class=8)
    return root


def _cfg(alphas: tuple[float, ...]) -> TrainConfig:
    return TrainConfig(
        epochs=2, batch_size=16, patience=2, fine_tune_epochs=2, fine_tune_batch_size=16, views=1, wise_ft=alphas
    )


def test_share_zero_keeps_the_backbone_as_it_was_before_fine_tuning(
    tiny_data: Path, tiny_backbone_file: Path, tmp_path: Path
) -> None:
    reference = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    scan = scan_dataset(tiny_data)
    tuned = train_model(scan, _cfg((1.0,)), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file), tmp_path, verbose=0)
    kept = train_model(scan, _cfg((0.0,)), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file), tmp_path, verbose=0)
    name = next(lay.name for lay in backbone_layers(reference)[145:] if lay.weights)
    ref = reference.get_layer(name).get_weights()[0]
    assert not np.allclose(tuned.model.get_layer(name).get_weights()[0], ref)
    np.testing.assert_array_equal(kept.model.get_layer(name).get_weights()[0], ref)
    assert tuned.meta.training["wise_ft"] is None
    assert kept.meta.training["wise_ft"]["alpha"] == 0.0


def test_several_shares_the_rule_picks_one_and_records_all(
    tiny_data: Path, tiny_backbone_file: Path, tmp_path: Path
) -> None:
    scan = scan_dataset(tiny_data)
    result = train_model(
        scan, _cfg((0.0, 0.5, 1.0)), TINY_ARCH, TINY_SPEC, str(tiny_backbone_file), tmp_path, verbose=0
    )
    choice = result.meta.training["wise_ft"]
    assert set(choice["scores"]) == {"0.0", "0.5", "1.0"}
    assert choice["scores"][str(choice["alpha"])] == max(choice["scores"].values())
    metrics = result.meta.metrics  # the share was chosen on the image alone, before training chose the views
    plain = metrics.get("validation_shift:no-views", metrics["validation_shift"])
    assert selection_score(plain) == pytest.approx(choice["scores"][str(choice["alpha"])], abs=1e-6)
    shift = metrics["validation_shift"]
    assert result.meta.training["config"]["wise_ft"] == [0.0, 0.5, 1.0]
    from core.card import model_card

    assert f"{choice['alpha']} of the way from those before fine-tuning" in model_card(result.meta)
    clean = result.meta.metrics["validation"]["accuracy"]
    assert shift["perturbations"]["clean"]["accuracy"] == pytest.approx(clean, abs=1e-6)  # the chosen model's


def test_train_cli_refuses_a_share_outside_zero_one(tiny_data: Path, tiny_backbone_file: Path, tmp_path: Path) -> None:
    args = ["train", tiny_data, "--out", tmp_path / "m", "--backbone-weights", tiny_backbone_file, "--wise-ft", "0.5,2"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code != 0 and "[0, 1]" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
    bad = CliRunner().invoke(main, [str(a) for a in args[:-1]] + ["half"])
    assert bad.exit_code == 2 and "--wise-ft" in bad.output
