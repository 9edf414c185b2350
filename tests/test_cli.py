"""The CLI end to end on generated data and a tiny real model: files written, read back, checked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import make_dataset, run, save_gray, xray_like
from pneumocam.cli.app import main
from pneumocam.errors import ModelLoadError
from pneumocam.paths import REPO_ROOT

CLASSES = ["BACTERIA", "NORMAL", "VIRUS"]


@pytest.fixture()
def data_with_junk(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "data"
    counts = make_dataset(root, "download")
    (root / "PNEUMONIA" / "person77_virus_1.jpeg").write_bytes(b"half a file")
    (root / "NORMAL" / "readme.txt").write_text("notes beside the images")
    return root, counts


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_consistent_report_files(data_with_junk, tiny_model_dir: Path, tmp_path: Path) -> None:
    root, counts = data_with_junk
    out = tmp_path / "report"
    result = run("evaluate", root, "--model", tiny_model_dir, "--out", out, "--batch-size", 4)
    assert "overall" in result.output and "skipped 1" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "predictions.csv", "confusion_matrix.png", "per_class_metrics.png", "reliability.png",
         "risk_coverage.png"]
    )  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    n = sum(counts.values())
    assert m["classes"] == CLASSES and m["n_images"] == n
    assert set(m["per_class"]["VIRUS"]) == {"accuracy", "precision", "recall", "f1", "auc", "support"}
    assert [m["per_class"][c]["support"] for c in CLASSES] == [counts[c] for c in CLASSES]
    assert m["skipped"] == [{"file": "PNEUMONIA/person77_virus_1.jpeg", "reason": m["skipped"][0]["reason"]}]
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == [
        "file", "true", "predicted", "p_BACTERIA", "p_NORMAL", "p_VIRUS", "in_distribution", "ood_score",
        "validity_reasons", "prediction_set",
    ]  # fmt: skip
    assert all(r["prediction_set"] == "" for r in rows)  # the tiny model has no set rule: no set, not a made-up one
    assert len(rows) == n
    flagged = [r for r in rows if r["in_distribution"] == "false"]
    assert all(float(r["ood_score"]) > 1 or r["validity_reasons"] for r in flagged)
    assert m["validity"]["scored"] and m["validity"]["n_flagged"] == len(flagged)
    assert m["validity"]["n_images"] == n and "validity (score and sure checks)" in result.output
    cm = np.zeros((3, 3), int)
    for r in rows:
        probs = [float(r[f"p_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert r["predicted"] == CLASSES[int(np.argmax(probs))]
        cm[CLASSES.index(r["true"]), CLASSES.index(r["predicted"])] += 1
    assert cm.tolist() == m["confusion_matrix"]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / n)
    from pneumocam.model.artifact import read_meta

    prov = m["provenance"]
    assert prov["model"]["sha256"] == read_meta(tiny_model_dir).weights_sha256 and prov["data_dir"] == root.name
    assert prov["date"].startswith("20") and {"tensorflow", "keras", "pneumocam"} <= set(prov["versions"])
    for png in ("confusion_matrix.png", "per_class_metrics.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_gallery_pages_match_the_outcome_count(data_with_junk, tiny_model_dir: Path, tmp_path: Path) -> None:
    root, _ = data_with_junk
    report = tmp_path / "report"
    run("evaluate", root, "--model", tiny_model_dir, "--out", report)
    rows = read_csv(report / "predictions.csv")
    for outcome, keep in (
        ("FN", lambda r: r["true"] == "VIRUS" and r["predicted"] != "VIRUS"),
        ("TN", lambda r: r["true"] != "VIRUS" and r["predicted"] != "VIRUS"),
    ):
        expected = sum(map(keep, rows))
        out = tmp_path / f"gallery_{outcome}"
        args = ["gallery", root, "--class", "virus", "--outcome", outcome, "--model", tiny_model_dir]
        result = run(*args, "--predictions", report / "predictions.csv", "--out", out, "--per-page", 2, "--layers", 2)
        assert f"{expected} image(s) with outcome {outcome}" in result.output
        pages = sorted(out.glob("page_*.png"))
        assert len(pages) == -(-expected // 2)
        index = (out / "index.html").read_text()
        assert all(p.name in index for p in pages)


def test_gallery_scores_when_no_predictions_given(dataset_download, tiny_model_dir: Path, tmp_path: Path) -> None:
    root, _ = dataset_download
    out = tmp_path / "g"
    run("gallery", root, "--class", "NORMAL", "--outcome", "TP", "--model", tiny_model_dir, "--out", out)
    assert (out / "index.html").exists()
    bad = run("gallery", root, "--class", "FUNGUS", "--outcome", "TP", "--model", tiny_model_dir, "--out", out, code=2)
    assert "--class" in bad.output and "Traceback" not in bad.output


def test_predict_json_and_overlays(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = save_gray(tmp_path / "a.png", xray_like(300, 200))
    b = save_gray(tmp_path / "b.jpeg", xray_like(120, 160, seed=2))
    cams = tmp_path / "cams"
    result = run("predict", a, b, "--model", tiny_model_dir, "--json", "--cam-out", cams, "--layers", 2)
    out = json.loads(result.stdout)
    assert [r["file"] for r in out] == [str(a), str(b)]
    from pneumocam.explain.pages import PAD, TILE

    for r in out:
        assert set(r["probabilities"]) == set(CLASSES)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
        assert Path(r["gradcam"]).read_bytes()[:4] == b"\x89PNG"
        assert r["gradcam_first_map"].startswith("default (not audited): Grad-CAM, last 3 layers")  # no audit yet
        assert Image.open(r["gradcam"]).width == PAD + 4 * (TILE + PAD)  # the X-ray, the default map, 2 layers


def test_predict_says_when_the_chosen_method_fails_sanity_on_the_model(tmp_path: Path) -> None:
    """The published model's audit saw some methods fail the sanity check: drawing one says so."""
    from pneumocam.explain.shown import FAILS_SANITY, sanity_status
    from pneumocam.model.artifact import read_meta
    from pneumocam.options import CAM_METHODS
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR

    meta = read_meta(DEFAULT_WEIGHTS_DIR)
    failing = [m for m in CAM_METHODS if sanity_status(meta, m) is False]
    passing = [m for m in CAM_METHODS if sanity_status(meta, m)]
    assert failing and meta.explain.method in passing
    image = save_gray(tmp_path / "x.png", xray_like(200, 180))
    for method, warned in ((failing[0], True), (passing[0], False)):
        result = run("predict", image, "--json", "--cam-out", tmp_path / method, "--method", method)
        assert (FAILS_SANITY in result.stderr) is warned
        assert (FAILS_SANITY in json.loads(result.stdout)[0]["gradcam_first_map"]) is warned


def test_predict_names_overlays_by_relative_path_and_batches_like_a_single_call(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """a/x.png and b/x.png get two overlays; scored in batches of 2, each call is the call of the file alone."""
    files = [save_gray(tmp_path / d / "x.png", xray_like(140, 110, seed=k)) for k, d in enumerate("abc")]
    cams = tmp_path / "cams"
    result = run("predict", *files, "--model", tiny_model_dir, "--json", "--cam-out", cams, "--batch-size", 2)
    batched = json.loads(result.stdout)
    assert [r["gradcam"] for r in batched] == [str(cams / d / "x_gradcam.png") for d in "abc"]
    assert all((cams / d / "x_gradcam.png").read_bytes()[:4] == b"\x89PNG" for d in "abc")
    plain = json.loads(run("predict", *files, "--model", tiny_model_dir, "--json", "--batch-size", 2).stdout)
    for k, f in enumerate(files):
        alone = json.loads(run("predict", f, "--model", tiny_model_dir, "--json").stdout)[0]
        for got in (batched[k], plain[k]):
            assert got["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)
            assert got["ood_score"] == pytest.approx(alone["ood_score"], rel=1e-4)


def test_predict_bad_image_is_one_line_and_exit_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "scan.jpeg"
    bad.write_text("not an image")
    good = save_gray(tmp_path / "ok.png", xray_like())
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "predict", str(good), str(bad), "--model", str(tiny_model_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: not a JPEG, PNG, BMP or DICOM image"]
    assert str(good) in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "{tmp}/nowhere"], "does not exist"),
        (["evaluate", "{tmp}/empty"], "no images"),
        (["evaluate", "{data}", "--model", "{tmp}/no_model"], "model folder"),
    ],
)
def test_evaluate_errors_are_one_line(args, message, dataset_download, tmp_path: Path, tiny_model_dir) -> None:
    root, _ = dataset_download
    for c in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "empty" / c).mkdir(parents=True)
    argv = [a.format(tmp=tmp_path, data=root) for a in args]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    result = run(*argv, code=1)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()[-1:]) == 1


def test_prepare_data_cli(dataset_download, tmp_path: Path) -> None:
    root, counts = dataset_download
    save_gray(root / "PNEUMONIA" / "person5_other_1.jpeg", xray_like())
    dest = tmp_path / "prepared"
    result = run("prepare-data", root, dest)
    for c in CLASSES:
        assert f"{c:<9}{counts[c]:>6}" in result.stdout
        assert len(list((dest / c).iterdir())) == counts[c]
    assert "person5_other_1.jpeg" in result.stderr
    again = run("prepare-data", root, dest, code=1)
    assert "not empty" in again.stderr


def test_every_command_has_help_with_an_example() -> None:
    assert len(main.commands) >= 11
    for cmd in main.commands:
        result = run(cmd, "--help")
        assert "Example" in result.output and "python -m cli" in result.output


def test_debug_variable_shows_the_traceback_of_our_errors(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from pneumocam.errors import DataError

    args = ["evaluate", str(tmp_path / "nowhere"), "--model", str(tiny_model_dir)]
    quiet = run(*args, code=1)
    assert "error: data folder" in quiet.stderr
    assert isinstance(quiet.exception, SystemExit)
    monkeypatch.setenv("PNEUMOCAM_DEBUG", "1")
    loud = run(*args, code=None)
    assert isinstance(loud.exception, DataError) and loud.exc_info[2] is not None


def test_debug_shows_the_library_error_behind_ours(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Our one-line error names the problem; PNEUMOCAM_DEBUG=1 also shows the library's own error it came from."""
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    args = ["predict", str(save_gray(tmp_path / "x.png", xray_like(64, 64))), "--model", str(broken)]
    quiet = run(*args, code=1)
    assert "is not valid JSON" in quiet.stderr and "Traceback" not in quiet.output and quiet.exc_info[0] is SystemExit
    loud = CliRunner().invoke(main, args, env={"PNEUMOCAM_DEBUG": "1"})  # raised, so Python prints both tracebacks
    assert isinstance(loud.exception, ModelLoadError) and isinstance(loud.exception.__cause__, json.JSONDecodeError)


def test_predict_a_folder_lists_failures_and_skips_gradcam_without_cam_out(tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "scans"
    a = save_gray(folder / "a.png", xray_like(300, 200))
    b = save_gray(folder / "sub" / "b.jpeg", xray_like(120, 160, seed=2))
    bad = folder / "c.jpeg"
    bad.write_text("not an image")
    table = run("predict", folder, "--model", tiny_model_dir, code=1)
    lines = table.stdout.strip().splitlines()
    assert lines[0].split("\t") == [
        "file", "predicted", "p_BACTERIA", "p_NORMAL", "p_VIRUS", "in_distribution", "ood_score"
    ]  # fmt: skip
    assert {line.split("\t")[0] for line in lines[1:]} == {str(a), str(b)}
    as_json = json.loads(run("predict", folder, "--model", tiny_model_dir, "--json", "--layers", 8, code=1).stdout)
    assert {r["file"]: r.get("error") for r in as_json} == {
        str(a): None,
        str(b): None,
        str(bad): "not a JPEG, PNG, BMP or DICOM image",
    }
    assert not any("gradcam" in r for r in as_json)
    for r in [r for r in as_json if "error" not in r]:
        assert isinstance(r["in_distribution"], bool) and r["ood_score"] > 0
        assert r["in_distribution"] == (r["ood_score"] <= 1 and not r["reasons"])
    wrong = run("predict", a, "--model", tiny_model_dir, "--explain", "PNEUMONIA", code=2)
    assert "BACTERIA, NORMAL, VIRUS" in wrong.output


def test_evaluating_again_keeps_the_galleries_drawn_from_the_report(
    dataset_download, tiny_model_dir, tmp_path, monkeypatch
):
    root, _ = dataset_download
    monkeypatch.chdir(tmp_path)  # default folders: reports/<data>/ and reports/<data>/gallery/
    run("evaluate", root, "--model", tiny_model_dir)
    report = tmp_path / "reports" / root.name
    run("gallery", root, "--class", "NORMAL", "--outcome", "TP", "--model", tiny_model_dir)
    index = report / "gallery" / "NORMAL_TP" / "index.html"
    assert index.is_file()
    before = (report / "metrics.json").stat().st_mtime_ns
    run("evaluate", root, "--model", tiny_model_dir, "--batch-size", 3)
    assert (report / "metrics.json").stat().st_mtime_ns != before  # a new report...
    assert index.is_file()  # ...that kept the gallery
    assert not list((tmp_path / "reports").glob(".*staging*"))


MISTAKES = [
    (["evaluate", "{tmp}/nowhere"], 1, "does not exist"),
    (["gallery", "{data}", "--class", "PNEUMONIA", "--outcome", "FN"], 2, "BACTERIA, NORMAL, VIRUS"),
    (["gallery", "{data}", "--class", "VIRUS", "--outcome", "FN", "--explain", "LUNGS"], 2, "'true'"),
    (["evaluate", "{data}", "--out", "{tmp}/thesis"], 1, "choose another --out"),
    (["evaluate", "{data}", "--out", "{tmp}/afile"], 1, "not a folder"),
    (["stress", "{data}", "--out", "{tmp}/thesis"], 1, "choose another --out"),
    (["evaluate", "{data}", "--record-as", "test", "--repo-id", "org/m", "--revision", "0" * 40], 2, "local model"),
]


def test_mistakes_are_reported_before_the_model_or_tensorflow_loads(dataset_download, tmp_path) -> None:
    """In one fresh interpreter, each mistake in turn: its error, and TensorFlow still never imported."""
    root, _ = dataset_download
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.docx").write_text("precious")
    (tmp_path / "afile").write_text("a file, not a folder")
    calls = []
    for args, _, _ in MISTAKES:
        argv = [a.format(tmp=tmp_path, data=root) for a in args]
        calls.append(argv if "--repo-id" in argv else [*argv, "--model", str(REPO_ROOT / "weights")])
    probe = (
        "import json, sys; from click.testing import CliRunner; from pneumocam.cli.app import main\n"
        f"for argv in {calls!r}:\n"
        "    r = CliRunner().invoke(main, argv)\n"
        "    print(json.dumps([r.exit_code, 'tensorflow' in sys.modules, r.output]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(MISTAKES), proc.stdout + proc.stderr
    for (args, code, message), (exit_code, tensorflow, output) in zip(MISTAKES, results):
        assert (exit_code, tensorflow) == (code, False), (args, output)
        assert message in output, (args, output)
    assert [p.name for p in (tmp_path / "thesis").iterdir()] == ["chapter1.docx"]


def test_gallery_reuses_the_predictions_of_an_evaluate_by_the_same_model(
    dataset_download, tiny_model_dir, tmp_path, monkeypatch
) -> None:
    root, _ = dataset_download
    monkeypatch.chdir(tmp_path)
    run("evaluate", root, "--model", tiny_model_dir)
    args = ["gallery", root, "--class", "NORMAL", "--outcome", "TP", "--model", tiny_model_dir]
    reused = run(*args)
    assert f"reusing {Path('reports') / root.name / 'predictions.csv'}" in reused.stderr
    assert "scoring" not in reused.stderr
    other = run(
        "gallery", root, "--class", "NORMAL", "--outcome", "TP", "--model", REPO_ROOT / "weights", "--overwrite"
    )
    assert "reusing" not in other.stderr  # another model scores again


def test_a_folder_of_unreadable_images_names_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    for cls in ("BACTERIA", "NORMAL", "VIRUS"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        (tmp_path / "data" / cls / f"{cls.lower()}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run("evaluate", tmp_path / "data", "--model", tiny_model_dir, "--out", tmp_path / "r", code=1)
    assert "none of the 3 images" in result.stderr and "bacteria.png: " in result.stderr
    assert not (tmp_path / "r").exists()
