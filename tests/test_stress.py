"""Acquisition augmentation and the stress test: real images in, measurable changes out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_ARCH, TINY_SPEC, make_dataset, run, served, xray_like
from pneumocam.images.data import scan_dataset
from pneumocam.images.preprocess import to_model_input
from pneumocam.images.readers import read_image
from pneumocam.model.network import build_model
from pneumocam.reports.stress import CLEAN, PERTURBATIONS, perturb, stress_metrics, stress_probabilities
from pneumocam.scoring.metrics import classification_metrics
from pneumocam.training.activations import extract_activations
from pneumocam.training.augment import AcquisitionAugment, acquisition_augmenter


def batch(n: int = 6, size: int = 64) -> np.ndarray:
    return np.stack([np.repeat(xray_like(size, size, seed=i)[..., None], 3, -1) for i in range(n)]).astype(np.float32)


def sharpness(x: np.ndarray) -> float:
    """Variance of the Laplacian: falls when an image is blurred."""
    return float(np.mean([cv2.Laplacian(img[..., 0], cv2.CV_32F).var() for img in x]))


IDENTITY = AcquisitionAugment(
    zoom=(1.0, 1.0), shift=0.0, downscale_prob=0.0, blur_prob=0.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0), noise_prob=0
)


def test_augmenter_with_every_change_off_is_the_identity() -> None:
    x = batch()
    out = acquisition_augmenter(IDENTITY, seed=1)(tf.constant(x)).numpy()
    np.testing.assert_allclose(out, x, atol=0.6)


def test_augmenter_is_seeded_bounded_and_changes_images() -> None:
    x = tf.constant(batch())
    a = acquisition_augmenter(seed=3)(x).numpy()
    b = acquisition_augmenter(seed=3)(x).numpy()
    c = acquisition_augmenter(seed=4)(x).numpy()
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    assert np.abs(a - x.numpy()).mean(axis=(1, 2, 3)).min() > 0.5  # every image changed


def test_blur_lowers_sharpness_and_keeps_brightness() -> None:
    from dataclasses import replace

    x = batch()
    blurred = acquisition_augmenter(replace(IDENTITY, blur_prob=1.0, blur_sigma=2.0), seed=0)(tf.constant(x)).numpy()
    assert sharpness(blurred) < 0.5 * sharpness(x)
    np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=0.03)


def test_zooming_out_leaves_a_black_frame() -> None:
    from dataclasses import replace

    x = batch() + 20.0
    out = acquisition_augmenter(replace(IDENTITY, zoom=(0.7, 0.7)), seed=0)(tf.constant(x)).numpy()
    assert out[:, :3].max() < 1.0 and out[:, :, -3:].max() < 1.0
    assert out[:, 28:36, 28:36].min() > 10


def test_acquisition_views_differ_from_seed_views(tiny_backbone_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "download", per_class=2)
    paths = [s.path for s in scan_dataset(root).samples[:4]]
    model = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    seed_views, _ = extract_activations(served(model), paths, copies=2, seed=5)
    acq_views, _ = extract_activations(served(model), paths, copies=2, seed=5, augment="acquisition")
    np.testing.assert_allclose(seed_views[0], acq_views[0])  # view 0 is always the plain image
    assert np.abs(seed_views[1].astype(np.float32) - acq_views[1]).max() > 0.05
    with pytest.raises(ValueError, match="unknown augmentation"):
        extract_activations(served(model), paths, copies=2, augment="mixup")


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_each_perturbation_keeps_shape_and_range_and_changes_the_image(name: str) -> None:
    x = batch(1, 96)[0]
    out = perturb(x, name)
    again = perturb(x, name)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out, again)  # deterministic
    from pneumocam.reports.stress import ENCODING

    assert np.abs(out - x).mean() > (0.05 if name in ENCODING else 0.5)  # re-encoding is subtle by design


def test_clean_is_untouched_and_unknown_names_are_refused() -> None:
    x = batch(1)[0]
    np.testing.assert_array_equal(perturb(x, CLEAN), x)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(x, "rain")


def test_stress_metrics_summarise_each_perturbation() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    right = np.eye(3)[y]
    wrong = np.eye(3)[[0, 0, 2, 2, 2, 2]]  # normals called virus
    result = stress_metrics(y, {CLEAN: right, "blur-3": wrong, "noise-8": right}, ["BACTERIA", "NORMAL", "VIRUS"])
    assert result["perturbations"][CLEAN]["accuracy"] == 1.0
    assert result["worst"] == "blur-3" and result["worst_accuracy"] == pytest.approx(4 / 6)
    assert result["mean_accuracy"] == pytest.approx((4 / 6 + 1) / 2)
    assert result["min_recall"] == {"BACTERIA": 1.0, "NORMAL": 0.0, "VIRUS": 1.0}


def test_shifted_scores_match_scoring_the_perturbed_files(tiny_predictor, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "three-folder", per_class=2)
    paths = [s.path for s in scan_dataset(root).samples]
    (root / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    broken = root / "NORMAL" / "broken.jpeg"
    kept, probs, skipped = stress_probabilities(tiny_predictor, [*paths, broken], [CLEAN, "blur-3"], batch_size=4)
    assert kept == paths and len(skipped) == 1
    # The perturbation acts on the resized image; the model's JPEG step follows, as for any served file.
    resized = [to_model_input(read_image(p), tiny_predictor.spec.without_jpeg()) for p in paths]
    x = np.stack([tiny_predictor.finish_input(perturb(r, "blur-3")) for r in resized])
    np.testing.assert_allclose(probs["blur-3"], tiny_predictor.model(x, training=False).numpy(), atol=1e-5)
    assert not np.allclose(probs["blur-3"], probs[CLEAN], atol=1e-4)
    y = [["BACTERIA", "NORMAL", "VIRUS"].index(p.parent.name) for p in kept]
    assert classification_metrics(y, probs[CLEAN], tiny_predictor.meta.classes)["n_images"] == len(paths)


def test_stress_cli_writes_report_and_refuses_unknown_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "val"
    counts = make_dataset(root, "download", per_class=2)
    out = tmp_path / "stress"
    args = ["stress", str(root), "--model", str(tiny_model_dir), "--out", str(out), "--only", "blur-3,gamma-0.6"]
    result = run(*args)
    report = json.loads((out / "stress.json").read_text())
    assert list(report["perturbations"]) == [CLEAN, "blur-3", "gamma-0.6"]
    assert report["n_images"] == sum(counts.values())
    assert cv2.imread(str(out / "stress.png")) is not None
    assert "blur-3" in result.output and "mean accuracy" in result.output
    bad = run(*args[:-1], "rain", code=2)
    assert "unknown 'rain'" in bad.output


def test_resampling_augmentation_changes_fine_texture_only() -> None:
    from dataclasses import replace

    x = batch()
    out = acquisition_augmenter(replace(IDENTITY, resample_prob=1.0), seed=0)(tf.constant(x)).numpy()
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 255
    diff = np.abs(out - x).mean(axis=(1, 2, 3))
    assert diff.min() > 0.1  # every image resampled
    for a, b in zip(out, x):
        coarse = [cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA) for img in (a, b)]
        assert np.abs(coarse[0] - coarse[1]).mean() < 4  # the anatomy stays where it was


def test_jpeg_augmentation_adds_the_artefacts_of_a_real_encoder() -> None:
    from dataclasses import replace

    x = batch()
    aug = replace(IDENTITY, jpeg_prob=1.0, jpeg_quality=(20, 20))
    out = acquisition_augmenter(aug, seed=0)(tf.constant(x)).numpy()
    for img, coded in zip(x, out):
        ok, buf = cv2.imencode(".jpg", img.astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 20])
        reference = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)
        assert np.abs(coded - img).mean() > 1.0
        assert np.abs(coded - reference).mean() < 0.5 * np.abs(coded - img).mean()


def test_invariance_augmentation_trains_its_views(tmp_path: Path, tiny_backbone_file: Path) -> None:
    make_dataset(tmp_path / "d", "download", per_class=2)
    model = build_model(TINY_ARCH, TINY_SPEC, str(tiny_backbone_file))
    paths = [s.path for s in scan_dataset(tmp_path / "d").samples]
    plain, _ = extract_activations(served(model), paths, copies=2, augment="acquisition")
    inv, _ = extract_activations(served(model), paths, copies=2, augment="invariance")
    np.testing.assert_array_equal(plain[0], inv[0])
    assert np.abs(plain[1].astype(np.float32) - inv[1]).max() > 1e-3


def test_encoding_perturbations_report_the_share_of_changed_calls() -> None:
    from pneumocam.reports.stress import ENCODING

    x = batch(4, 96)[0]
    for name in ENCODING:
        out = perturb(x, name)
        assert out.shape == x.shape and 0 < np.abs(out - x).mean() < 20
    y = [0, 1, 2, 0]
    clean = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.05
    flipped = np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.05
    m = stress_metrics(y, {CLEAN: clean, "jpeg-50": flipped, "resample-area": clean}, ["B", "N", "V"])
    assert m["perturbations"]["jpeg-50"]["changed"] == pytest.approx(0.25)
    assert m["perturbations"]["resample-area"]["changed"] == 0.0
    assert m["max_changed_encoding"] == pytest.approx(0.25)


def test_model_input_from_an_original_is_the_data_sets_copy() -> None:
    """The default pipeline is how the 224 px copies were made: Pillow's antialiased bilinear, then JPEG quality 75."""
    import io

    from PIL import Image

    from pneumocam.images.preprocess import InputSpec, resize_to_input, to_model_input

    original = np.repeat(xray_like(1300, 1100, seed=5)[..., None], 3, -1)
    resized = Image.fromarray(original).resize((224, 224), Image.Resampling.BILINEAR)
    saved = io.BytesIO()
    resized.save(saved, "JPEG", quality=75)
    copy = np.asarray(Image.open(saved).convert("RGB"), dtype=np.float32)  # the data set's copy, made as it was
    spec = InputSpec()
    assert (spec.resize, spec.jpeg_quality) == ("pil-bilinear", 75)
    np.testing.assert_array_equal(resize_to_input(original, spec), np.asarray(resized, dtype=np.float32))
    np.testing.assert_array_equal(to_model_input(original, spec), copy)
    again = to_model_input(copy.astype(np.uint8), spec)  # a copy through the pipeline: nearly itself
    assert np.abs(again - copy).mean() < 1.0
    unrecorded = InputSpec(jpeg_quality=None)  # a model.json from before the JPEG step: the resize alone
    np.testing.assert_array_equal(to_model_input(original, unrecorded), np.asarray(resized, dtype=np.float32))
    area = to_model_input(original, InputSpec(resize="area"))
    assert np.abs(area - copy).max() > 0  # another filter gives other pixels


def test_the_imitated_original_is_as_close_to_the_copy_as_a_real_one() -> None:
    """Real originals brought through our loader differ from their copies by about 2 grey levels on average."""
    from pneumocam.reports.stress import ENCODING

    assert "original" in ENCODING
    import cv2

    smooth = cv2.GaussianBlur(xray_like(224, 224, seed=8).astype(np.float32), (0, 0), 2.0)
    copy = np.repeat(np.rint(smooth)[..., None], 3, -1).astype(np.float32)
    imitated = perturb(copy, "original")
    assert 0.3 < np.abs(imitated - copy).mean() < 4.0
    assert np.array_equal(imitated[..., 0], imitated[..., 2])  # still grey
    other = perturb(copy[::-1].copy(), "original")[::-1]
    assert not np.array_equal(other, imitated)  # each image draws its own filter, scale and noise
