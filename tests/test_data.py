"""Scanning both data layouts, preparing the seed's layout, and the patient-grouped split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_dataset, save_gray, xray_like
from pneumocam.errors import DataError
from pneumocam.images.data import label_from_name, patient_id, prepare_layout, scan_dataset
from pneumocam.training.split import class_weights, split_by_patient


def test_label_and_patient_from_names() -> None:
    assert label_from_name("person1000_bacteria_2931.jpeg") == "BACTERIA"
    assert label_from_name("person1000_virus_1681.jpeg") == "VIRUS"
    assert label_from_name("person1_mystery_1.jpeg") is None
    assert patient_id("person1000_virus_1681.jpeg") == patient_id("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_id("IM-0115-0001.jpeg") == "IM-0115"
    assert patient_id("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"


@pytest.mark.parametrize("layout", ["download", "three-folder"])
def test_scan_both_layouts(tmp_path: Path, layout: str) -> None:
    counts = make_dataset(tmp_path, layout)
    (tmp_path / "NORMAL" / ".DS_Store").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "NORMAL" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    scan = scan_dataset(tmp_path)
    assert scan.layout == layout
    assert scan.counts() == counts
    assert all(p.path.suffix == ".jpeg" for p in scan.samples)


def test_unlabeled_pneumonia_files_are_listed(dataset_download) -> None:
    root, counts = dataset_download
    save_gray(root / "PNEUMONIA" / "person99_unknown_1.jpeg", xray_like())
    scan = scan_dataset(root)
    assert [p.name for p in scan.unlabeled] == ["person99_unknown_1.jpeg"]
    assert scan.counts() == counts


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="pick one"):
        scan_dataset(tmp_path)
    for c in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "empty" / c).mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        scan_dataset(tmp_path / "empty")


def test_prepare_layout_links_and_refuses_to_overwrite(dataset_download, tmp_path: Path) -> None:
    root, counts = dataset_download
    dest = tmp_path / "prepared"
    scan = prepare_layout(root, dest)
    assert scan.counts() == counts
    again = scan_dataset(dest)
    assert again.layout == "three-folder" and again.counts() == counts
    src = next(p for p in (root / "PNEUMONIA").iterdir() if "virus" in p.name)
    assert os.stat(dest / "VIRUS" / src.name).st_ino == os.stat(src).st_ino
    with pytest.raises(DataError, match="not empty"):
        prepare_layout(root, dest)
    assert scan_dataset(prepare_layout(root, dest, overwrite=True).root).counts() == counts


def test_split_keeps_patients_on_one_side_and_is_stratified(tmp_path: Path) -> None:
    for pid in range(60):
        kind = "bacteria" if pid % 2 else "virus"
        for j in range(1 + pid % 3):
            save_gray(tmp_path / "PNEUMONIA" / f"person{pid}_{kind}_{j}.jpeg", xray_like(8, 8))
    for pid in range(30):
        save_gray(tmp_path / "NORMAL" / f"IM-{pid:04d}-0001.jpeg", xray_like(8, 8))
    samples = scan_dataset(tmp_path).samples
    train, val = split_by_patient(samples, 0.2, seed=1)
    assert len(train) + len(val) == len(samples)
    assert not {patient_id(s.path) for s in train} & {patient_id(s.path) for s in val}
    for cls in ("BACTERIA", "NORMAL", "VIRUS"):
        share = sum(s.label == cls for s in val) / sum(s.label == cls for s in samples)
        assert 0.1 <= share <= 0.3
    assert split_by_patient(samples, 0.2, seed=1) == (train, val)


def test_balanced_class_weights_equalise_classes() -> None:
    import numpy as np

    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    w = class_weights(y, 3)
    totals = [w[k] * (y == k).sum() for k in range(3)]
    assert np.allclose(totals, totals[0])
