"""The validity score: statistics, sure checks, every entry point, and adapted models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from helpers import adaptable_copy, make_dataset, run, save_gray, xray_like
from pneumocam.errors import ModelLoadError
from pneumocam.explain.explainer import Explainer
from pneumocam.images.readers import Header, read_image_and_header
from pneumocam.model import validity
from pneumocam.model.artifact import VALIDITY_FILE
from pneumocam.model.validity import ValidityStats, input_reasons
from pneumocam.scoring.predictor import load_predictor

SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"


def gaussian_stats(rng: np.random.Generator, d: int = 6) -> tuple[ValidityStats, np.ndarray]:
    train = rng.normal(0, 1, (600, d)) + np.repeat(np.eye(3, d) * 3, 200, axis=0)
    labels = np.repeat(np.arange(3), 200)
    val = rng.normal(0, 1, (400, d)) + np.eye(3, d)[np.arange(400) % 3] * 3
    return validity.fit(train, labels, val, "out_relu"), val


def test_the_threshold_accepts_the_share_of_validation_and_far_points_are_flagged() -> None:
    stats, val = gaussian_stats(np.random.default_rng(0))
    accepted = np.mean(stats.scores(val) <= 1)
    assert 0.95 <= accepted < 0.96
    far = np.random.default_rng(1).normal(0, 1, (50, 6)) + 12
    assert (stats.scores(far) > 1).all()
    # The distance is to the nearest class mean: each class's own centre scores near zero.
    assert (stats.scores(stats.means) < 0.05).all()


def test_statistics_survive_saving_and_rematching_maps_a_shifted_site_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stats, val = gaussian_stats(rng)
    back = ValidityStats.load(stats.save(tmp_path / VALIDITY_FILE))
    assert back.layer == "out_relu" and back.threshold == stats.threshold
    assert np.allclose(back.scores(val), stats.scores(val))
    site = val * 0.5 + 4.0  # another site: the same X-rays, other spread and offset
    assert np.mean(stats.scores(site) <= 1) < 0.2
    matched = stats.rematched(site.mean(0), site.std(0))
    assert np.mean(matched.scores(site) <= 1) > 0.9


def test_the_sure_checks_read_colour_and_the_dicom_header() -> None:
    photo, header = read_image_and_header(SAMPLE_DATA / "grace_hopper.jpg")
    assert header == Header() and any("colour image" in r for r in input_reasons(photo, header))
    ct, header = read_image_and_header(get_testdata_file("CT_small.dcm"))
    assert header.modality == "CT" and any("modality CT" in r for r in input_reasons(ct, header))
    grey = np.repeat(xray_like(64, 64)[..., None], 3, -1)
    assert input_reasons(grey, Header()) == []
    assert input_reasons(grey, Header("DX", "CHEST", "PA")) == []
    reasons = input_reasons(grey, Header("CR", "HAND", "LL"))
    assert len(reasons) == 2 and "body part HAND" in reasons[0] and "view LL" in reasons[1]


def test_every_entry_point_gives_one_image_the_same_score(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Batch scoring, one-image probabilities and Grad-CAM compute the same validity."""
    loaded = load_predictor(tiny_model_dir)
    assert loaded.validity_stats is not None and loaded.meta.validity.validation["accepted"] >= 0.95
    files = [save_gray(tmp_path / f"x{i}.png", xray_like(64, 64, seed=3000 + i)) for i in range(3)]
    files.append(tmp_path / "photo.jpg")
    shutil.copy(SAMPLE_DATA / "grace_hopper.jpg", files[-1])
    scores = loaded.score(files, batch_size=2)
    batch = scores.verdicts()
    decoded = [read_image_and_header(f) for f in files]
    single = [v for _, v in loaded.score_images([d[0] for d in decoded], [d[1] for d in decoded])]
    explained = [
        e.validity for e in Explainer(loaded).explain([d[0] for d in decoded], headers=[d[1] for d in decoded])
    ]
    for a, b, c in zip(batch, single, explained):
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-4) == pytest.approx(c.ood_score, rel=1e-4)
        assert a.in_distribution == b.in_distribution == c.in_distribution
        assert a.reasons == b.reasons == c.reasons  # the batch path carries them joined, and splits them whole
    assert not batch[-1].in_distribution and any("colour" in r for r in batch[-1].reasons)


def test_a_tampered_validity_file_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    stats = ValidityStats.load(folder / VALIDITY_FILE)
    stats.threshold *= 100  # would accept anything
    stats.save(folder / VALIDITY_FILE)
    with pytest.raises(ModelLoadError, match="does not match the SHA-256"):
        load_predictor(folder)
    (folder / VALIDITY_FILE).unlink()
    with pytest.raises(ModelLoadError, match="lacks it"):
        load_predictor(folder)


def test_predict_flags_the_files_of_the_issue_with_any_model(tiny_model_dir: Path) -> None:
    """The colour and header checks flag these whatever the statistics say."""
    files = [
        SAMPLE_DATA / "grace_hopper.jpg",
        SAMPLE_DATA / "logo2.png",
        get_testdata_file("CT_small.dcm"),
        get_testdata_file("MR_small.dcm"),
        get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm"),
    ]
    out = run("predict", *map(str, files), "--json", "--model", tiny_model_dir)
    calls = json.loads(out.stdout)
    assert [c["in_distribution"] for c in calls] == [False] * 5
    assert all(c["reasons"] for c in calls)


def test_fit_validity_adds_statistics_to_an_older_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "older"
    shutil.copytree(tiny_model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta.pop("validity")
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / VALIDITY_FILE).unlink()
    assert load_predictor(folder).validity_stats is None
    data = tmp_path / "train"
    make_dataset(data, per_class=8)
    out = run("fit-validity", data, "--model-dir", folder)
    loaded = load_predictor(folder)
    record = loaded.meta.validity
    assert loaded.validity_stats is not None and record.layer == loaded.validity_stats.layer
    assert record.n_train + record.validation["n_images"] == 8 * 3 + 3
    assert record.validation["accepted"] >= 0.95 and "threshold accepts" in out.output


def test_adapting_rematches_the_statistics_to_the_site(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pneumocam.site.models import adapt_to_site

    data = tmp_path / "train"
    make_dataset(data, per_class=6)
    base = load_predictor(adaptable_copy(tmp_path / "model", tiny_model_dir, data))
    site = tmp_path / "site"
    for i in range(12):
        save_gray(site / f"s{i}.png", (0.5 * xray_like(64, 64, seed=700 + i).astype(float) + 90).astype(np.uint8))
    paths = sorted(site.glob("*.png"))
    meta = adapt_to_site(base, site, tmp_path / "adapted")
    adapted = load_predictor(tmp_path / "adapted")
    assert meta.validity.rematched == {"folder": "site", "n_images": 12}
    assert not np.allclose(adapted.validity_stats.scale, 1.0)
    _, raw = adapted.summaries(paths, adapted.validity_stats.layer)
    mapped = raw * adapted.validity_stats.scale + adapted.validity_stats.shift
    live = (raw.std(0) > 1e-3) & (base.validity_stats.train_std > 1e-3)
    assert live.sum() > 100  # the site's summaries now have the training X-rays' mean and spread
    assert np.allclose(mapped.mean(0)[live], base.validity_stats.train_mean[live], atol=1e-3, rtol=1e-3)
    assert np.allclose(mapped.std(0)[live], base.validity_stats.train_std[live], atol=1e-3, rtol=1e-2)


def test_a_dicom_of_another_body_part_is_flagged_by_evaluate(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An archive with a hand radiograph among the chest X-rays: scored, flagged, counted."""
    root = tmp_path / "data"
    make_dataset(root, per_class=3)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Modality, ds.BodyPartExamined = "CR", "HAND"
    ds.save_as(root / "NORMAL" / "IM-9999-0001.dcm")
    run("evaluate", root, "--model", tiny_model_dir, "--out", tmp_path / "r")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n_images"] == 3 * 3 + 3 + 1 and m["validity"]["reasons"]["DICOM body part HAND, not the chest"] == 1
    rows = (tmp_path / "r" / "predictions.csv").read_text().splitlines()
    hand = next(r for r in rows if r.startswith("NORMAL/IM-9999-0001.dcm"))
    assert ",false," in hand and "body part HAND" in hand


def test_the_patient_age_is_read_from_the_age_or_the_birth_date() -> None:
    from pydicom.dataset import Dataset

    from pneumocam.images.readers import patient_age

    def ds(**tags: str) -> Dataset:
        d = Dataset()
        for k, v in tags.items():
            setattr(d, k, v)
        return d

    assert patient_age(ds(PatientAge="062Y")) == 62
    assert patient_age(ds(PatientAge="018M")) == pytest.approx(1.5)
    assert patient_age(ds(PatientAge="003W")) == pytest.approx(21 / 365.25)
    assert patient_age(ds(PatientBirthDate="19600105", StudyDate="20220104")) == pytest.approx(62, abs=0.01)
    assert patient_age(ds(PatientBirthDate="20190301", SeriesDate="20220301")) == pytest.approx(3, abs=0.01)
    for unreadable in (ds(), ds(PatientAge="62"), ds(PatientAge="ABCY"), ds(PatientBirthDate="19600105")):
        assert patient_age(unreadable) is None
    grey = np.repeat(xray_like(64, 64)[..., None], 3, -1)
    assert input_reasons(grey, Header("CR", "CHEST", "PA", age_years=4.0)) == []
    reasons = input_reasons(grey, Header("CR", "CHEST", "PA", age_years=62.0))
    assert reasons == ["DICOM patient age 62 years, an adult (the model is for children)"]


def test_an_adult_chest_dicom_is_flagged_and_a_child_s_is_not(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An X-ray-like chest DICOM that says its patient is 62 is flagged whatever the score; at 4 it is not."""
    pixels = xray_like(96, 80).astype(np.uint16) * 16
    for name, age in (("adult.dcm", "062Y"), ("child.dcm", "004Y")):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PatientAge = "CR", "CHEST", "PA", age
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(tmp_path / name)
    out = run("predict", tmp_path, "--json", "--model", tiny_model_dir)
    adult, child = json.loads(out.stdout)
    assert not adult["in_distribution"] and any("patient age 62 years" in r for r in adult["reasons"])
    assert not any("patient age" in r for r in child["reasons"])


def proxy_like(rng: np.random.Generator, n: int, d: int = 6) -> np.ndarray:
    """Summaries of radiographs that are not ours: the distance's part near the training X-rays, the rest apart."""
    far = rng.normal(0, 1, (n, 2 * d)) + np.r_[np.zeros(d), np.full(d, 3.0)]
    far[:, :d] += np.eye(3, d)[np.arange(n) % 3] * 3
    return far


def test_a_discriminator_flags_what_the_distance_accepts_and_keeps_the_validation_share(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    base, val = gaussian_stats(rng)
    tail = lambda n: rng.normal(0, 1, (n, 6))  # noqa: E731 - the discriminator's layer: training X-rays centred
    train = np.c_[rng.normal(0, 1, (600, 6)) + np.repeat(np.eye(3, 6) * 3, 200, axis=0), tail(600)]
    val_whole = np.c_[val, tail(len(val))]
    proxy, held_out = proxy_like(rng, 120), proxy_like(rng, 60)
    assert np.mean(base.scores(held_out[:, :6]) > 1) < 0.3  # the distance alone misses most of them
    stats = validity.with_discriminator(base, "block_16_expand_relu", train, proxy, val_whole)
    assert stats.layer == "out_relu+block_16_expand_relu" and stats.width == 12
    assert 0.95 <= np.mean(stats.scores(val_whole) <= 1) < 0.96
    assert np.mean(stats.scores(held_out) > 1) >= 0.95
    back = ValidityStats.load(stats.save(tmp_path / VALIDITY_FILE))
    np.testing.assert_allclose(back.scores(held_out), stats.scores(held_out), rtol=1e-5)
    older = tmp_path / "older.npz"  # a file written before the discriminator: the distance alone, as before
    np.savez(
        older,
        layer=np.array("out_relu"),
        threshold=np.array(base.threshold),
        means=base.means,
        precision=base.precision,
        train_mean=base.train_mean,
        train_std=base.train_std,
        scale=base.scale,
        shift=base.shift,
    )
    np.testing.assert_allclose(ValidityStats.load(older).scores(val), base.scores(val), rtol=1e-6)


def test_fit_validity_with_a_proxy_folder_adds_a_discriminator_every_entry_point_uses(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    data = tmp_path / "train"
    make_dataset(data, per_class=8)
    proxy = tmp_path / "proxy"
    for i in range(8):  # radiographs that are not ours: inverted and turned X-ray-like images
        save_gray(proxy / "other" / f"p{i}.png", np.rot90(255 - xray_like(64, 64, seed=900 + i)))
    run("fit-validity", data, "--model-dir", folder, "--proxy", proxy)
    loaded = load_predictor(folder)
    record = loaded.meta.validity
    assert record.discriminator["against"] == {"images": 8, "folder": "proxy"}
    assert loaded.validity_stats.has_discriminator and loaded.validity_stats.layer.endswith("+block_16_expand_relu")
    assert record.validation["accepted"] >= 0.95
    files = [save_gray(tmp_path / "new" / f"x{i}.png", xray_like(64, 64, seed=4000 + i)) for i in range(2)]
    files += sorted((proxy / "other").glob("*.png"))[:2]
    batch = loaded.score(files).verdicts()
    explained = [e.validity for e in Explainer(loaded).explain([read_image_and_header(f)[0] for f in files])]
    for a, b in zip(batch, explained):
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-4)
    assert not batch[-1].in_distribution and not batch[-2].in_distribution
