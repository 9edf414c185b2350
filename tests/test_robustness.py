"""Messy hospital folders: a generated corpus of awkward files, a fuzz run, and killed runs."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_images import bomb_png, write_dicom

from helpers import decode_bytes, make_dataset, run, save_gray, xray_like
from pneumocam.errors import ImageLoadError
from pneumocam.images.readers import read_image
from pneumocam.paths import REPO_ROOT

VALID = "valid"


def awkward_corpus(root: Path) -> dict[str, str]:
    """Write every awkward case into ``root/NORMAL`` etc.; returns file name -> VALID or 'skip'."""
    normal, virus = root / "NORMAL", root / "PNEUMONIA"
    normal.mkdir(parents=True)
    virus.mkdir(parents=True)
    gray = xray_like(120, 100)
    expect: dict[str, str] = {}

    def add(name: str, kind: str, folder: Path = normal) -> Path:
        expect[name] = kind
        return folder / name

    add("empty.jpeg", "skip").write_bytes(b"")
    add("notes.jpeg", "skip").write_text("radiologist notes, not an image")
    full = save_gray(add("truncated.jpeg", "skip"), xray_like(400, 400)).read_bytes()
    (normal / "truncated.jpeg").write_bytes(full[: len(full) // 3])
    png = bytearray(save_gray(add("badcrc.png", "skip"), gray).read_bytes())
    png[40] ^= 0xFF
    (normal / "badcrc.png").write_bytes(bytes(png))
    add("bomb.png", "skip").write_bytes(bomb_png(40000, 40000))
    Image.fromarray(gray.astype(np.uint16) * 200).save(add("sixteen.png", VALID))
    Image.fromarray(gray).convert("RGBA").save(add("rgba.png", VALID))
    Image.fromarray(gray).convert("P").save(add("palette.png", VALID))
    Image.fromarray(gray).convert("CMYK").save(add("cmyk.jpeg", VALID))
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(gray).save(add("rotated.jpeg", VALID), exif=exif)
    save_gray(add("one_pixel.png", VALID), np.array([[128]], np.uint8))
    save_gray(add("thin.png", VALID), xray_like(1, 700))
    save_gray(add("bitmap.bmp", VALID), gray)
    pixels = (gray.astype(np.uint16) * 16).astype(np.uint16)
    write_dicom(add("mono1.dcm", VALID), pixels, "MONOCHROME1")
    write_dicom(add("nopixels.dcm", "skip"), pixels, with_pixels=False)
    save_gray(add("person9_virus_1.jpeg", VALID, virus), gray)
    loop_a, loop_b = virus / "person8_virus_1.png", virus / "person8_virus_2.png"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    expect[loop_a.name] = expect[loop_b.name] = "skip"
    odd = os.fsdecode(b"person7_virus_\xff\xfe.png")
    save_gray(add(odd, VALID, virus), gray)
    (normal / "dir_named.png").mkdir()  # a folder, whatever its name: walked, not read
    os.mkfifo(normal / "fifo.png")
    expect["fifo.png"] = "skip"
    # ignored without noise: hidden files, stray non-images, unknown folders
    (normal / ".DS_Store").write_bytes(b"\0\1")
    (normal / "._scan.jpeg").write_bytes(b"\0\1")
    (normal / "README.txt").write_text("export notes")
    (root / "OTHER").mkdir()
    save_gray(root / "OTHER" / "stray.png", gray)
    return expect


def test_awkward_files_are_scored_or_skipped_with_a_reason(tmp_path: Path, tiny_model_dir: Path) -> None:
    expect = awkward_corpus(tmp_path / "data")
    out = tmp_path / "report"
    result = run("evaluate", tmp_path / "data", "--model", tiny_model_dir, "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    skipped = {Path(s["file"]).name: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {n for n, k in expect.items() if k == "skip"}
    assert all(reason for reason in skipped.values())
    assert m["n_images"] == sum(k == VALID for k in expect.values())
    rows = (out / "predictions.csv").read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    assert len(rows) == 1 + m["n_images"]
    assert any(os.fsdecode(b"\xff\xfe") in r for r in rows)
    assert f"skipped {len(skipped)} unreadable file(s)" in result.stderr
    for noise in (".DS_Store", "README.txt", "stray.png"):
        assert noise not in result.output and noise not in json.dumps(m)


def test_bomb_is_refused_before_allocating(tmp_path: Path) -> None:
    import resource

    (tmp_path / "bomb.png").write_bytes(bomb_png(40000, 40000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        read_image(tmp_path / "bomb.png")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB; the image would be 1.6 GB


def test_huge_but_legal_image_is_read(tmp_path: Path) -> None:
    arr = np.zeros((6000, 9000), np.uint8)
    arr[1000:5000, 2000:7000] = 200
    Image.fromarray(arr).save(tmp_path / "huge.png", compress_level=1)
    rgb = read_image(tmp_path / "huge.png")
    assert rgb.shape == (6000, 9000, 3) and rgb[3000, 4500, 0] == 200


def test_exif_rotated_overlay_lines_up_with_the_displayed_image(tmp_path: Path, tiny_predictor) -> None:
    from pneumocam.explain.explainer import Explainer

    upright = xray_like(90, 140)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; displayed after a 90 degree clockwise turn
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "exif.png", exif=exif)
    save_gray(tmp_path / "plain.png", upright)
    explainer = Explainer(tiny_predictor)
    a = explainer.explain_file(tmp_path / "exif.png", n_layers=2)
    b = explainer.explain_file(tmp_path / "plain.png", n_layers=2)
    assert a.image.shape == b.image.shape == (90, 140, 3)
    np.testing.assert_array_equal(a.image, b.image)
    for ha, hb in zip(a.heatmaps, b.heatmaps):
        assert ha.shape == (90, 140)
        np.testing.assert_allclose(ha, hb, atol=1e-5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = save_gray(tmp_path / "locked.png", xray_like())
    path.chmod(0)
    with pytest.raises(ImageLoadError, match="cannot read"):
        read_image(path)


def _seed_files() -> list[bytes]:
    seeds = []
    gray = xray_like(24, 20)
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("BMP", {})):
        buf = io.BytesIO()
        Image.fromarray(gray).save(buf, format=fmt, **kw)
        seeds.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 100).save(buf, format="PNG")
    seeds.append(buf.getvalue())
    return seeds


SEEDS = _seed_files()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite_header"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            data[min(pos, 30) : min(pos, 30) + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(mutated())
def test_fuzz_loader_raises_only_our_error(data: bytes) -> None:
    try:
        rgb = decode_bytes(data, "fuzz.png")
    except ImageLoadError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


def test_killed_evaluate_leaves_the_old_report_or_the_new_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, "download", per_class=30)
    out = tmp_path / "report"
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--out", str(out)]
    run(*args)  # the runs before and after in this process; the killed ones each in their own
    cmd = [sys.executable, "-m", "cli", *args]
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    (data / "NORMAL" / "extra.png").write_bytes((data / "NORMAL").glob("*.jpeg").__next__().read_bytes())
    outcomes = set()
    for delay, sig in ((1.5, signal.SIGKILL), (3.5, signal.SIGKILL), (5.0, signal.SIGTERM), (7.0, signal.SIGTERM)):
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        files = {p.name: p.read_bytes() for p in out.iterdir()}
        assert set(files) == set(old)
        metrics = json.loads(files["metrics.json"])
        n_csv = files["predictions.csv"].decode().count("\n") - 1
        assert n_csv == metrics["n_images"]
        for name in ("confusion_matrix.png", "per_class_metrics.png", "reliability.png"):
            Image.open(io.BytesIO(files[name])).verify()
        outcomes.add("old" if files == old else "new")
    assert "old" in outcomes
    run(*args)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")]
    assert json.loads((out / "metrics.json").read_text())["n_images"] == json.loads(old["metrics.json"])["n_images"] + 1


def test_report_folder_is_never_mixed(tmp_path: Path, tiny_model_dir: Path, dataset_download) -> None:
    data, _ = dataset_download
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    args = ["evaluate", str(data), "--model", str(tiny_model_dir), "--out", str(out)]
    refused = run(*args, code=1)
    assert "--overwrite" in refused.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]
    report = tmp_path / "report"
    run(*args[:-1], report)
    (report / "gallery").mkdir()
    (report / "gallery" / "drawn.txt").write_text("a gallery drawn from the previous run")
    run(*args[:-1], report)
    assert (report / "gallery" / "drawn.txt").is_file()  # another command's work survives the new report
    assert sorted(p.name for p in report.iterdir()) == sorted(
        ["metrics.json", "predictions.csv", "confusion_matrix.png", "per_class_metrics.png", "reliability.png"]
        + ["risk_coverage.png", "gallery"]
    )
