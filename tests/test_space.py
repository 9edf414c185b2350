"""The Gradio Space: launched in-process, called through gradio_client and driven in a real browser."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from helpers import SHARED_DATA, run, save_gray, xray_like
from pneumocam.deploy.space_config import SpaceConfig, load_space_config
from pneumocam.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
ARTIFACTS = Path(os.environ.get("PNEUMOCAM_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real X-ray from ../shared when present, else a generated one (not square, to check sizes)."""
    real = sorted((SHARED_DATA / "test" / "PNEUMONIA").glob("*virus*")) if SHARED_DATA.is_dir() else []
    if real:
        return real[0]
    return save_gray(tmp_path_factory.mktemp("space") / "xray.png", xray_like(300, 260))


@pytest.fixture(scope="module")
def server() -> str:
    from space.app import create, launch_options

    demo, config = create(SpaceConfig(repo_id=None, revision=None, examples_dir="space/examples"))
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options(config)
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_predict_endpoint_through_gradio_client(server: str, xray: Path, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    label, gallery, summary, slider = client.predict(
        handle_file(str(xray)), 2, "predicted class", 0.5, api_name="/predict"
    )
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    api = client.view_api(print_info=False, return_format="dict")
    assert [r["label"] for r in api["named_endpoints"]["/predict"]["returns"]][2] == "summary"  # not value_13
    assert set(confidences) == {"BACTERIA", "NORMAL", "VIRUS"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] == max(confidences, key=confidences.get)
    from pneumocam.explain.shown import map_title, offered_methods
    from pneumocam.model.artifact import read_meta
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR

    meta = read_meta(DEFAULT_WEIGHTS_DIR)
    assert len(gallery) == 1 + 2  # the default map, then the last two layers
    assert gallery[0]["caption"].startswith(map_title(meta, meta.explain.method, meta.explain.score))
    assert gallery[0]["caption"].startswith("audited default: ")  # the published model's map was audited
    size = Image.open(xray).size
    for item in gallery:
        assert Image.open(item["image"]).size == size
    assert "out_relu" in gallery[-1]["caption"]  # the deepest layer, after its activation
    assert summary.startswith(f"## {label['label']} (")
    from pneumocam.model.conformal import CLASS_WORDS

    rule = meta.conformal.rule  # the set, in words, above the probabilities
    named = rule.names([confidences[c] for c in meta.classes], meta.classes)
    assert "90% prediction set" in summary and all(CLASS_WORDS[c].split()[0] in summary.lower() for c in named)
    shown, heat = (Image.open(p) for p in slider)  # the X-ray itself against the default map
    assert shown.size == heat.size == size
    assert np.abs(np.asarray(shown.convert("L"), float) - np.asarray(Image.open(xray).convert("L"), float)).mean() < 1
    assert np.asarray(heat, float).std(axis=-1).mean() > 5  # coloured, unlike the grey X-ray
    assert np.array_equal(np.asarray(heat), np.asarray(Image.open(gallery[0]["image"])))  # the first panel

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    conf, maps, warned, _ = client.predict(handle_file(str(photo)), 1, api_name="/predict")
    assert warned.startswith("## ⚠️ Not a meaningful call") and "colour" in warned
    assert not any(c in warned for c in meta.classes)  # no class headline; the outputs are kept below
    assert len(conf["confidences"]) == 3 and len(maps) == 2

    _, default, _, _ = client.predict(handle_file(str(xray)), api_name="/predict")  # every other input defaulted
    assert len(default) == 1 + meta.explain.layers  # the model's own default

    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(AppError, match="Cannot use this file"):
        client.predict(handle_file(str(bad)), api_name="/predict")
    again, gradcam, _, _ = client.predict(handle_file(str(xray)), 1, "NORMAL", 0.3, api_name="/predict")
    assert again["label"] == label["label"]
    offered = offered_methods(meta)
    other = next(m for m in offered if m != meta.explain.method)
    _, by_other, said, _ = client.predict(handle_file(str(xray)), 1, "NORMAL", 0.3, other, api_name="/predict")
    a, b = (np.asarray(Image.open(g[0]["image"]), float) for g in (gradcam, by_other))
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5  # the method reaches the heatmap
    assert not by_other[0]["caption"].startswith("audited default")  # named for what it is
    for refused in [m for m in ("gradcam", "gradcam++", "hirescam", "layercam") if m not in offered] + ["guessing"]:
        with pytest.raises(AppError, match=f"{re.escape(refused)} is not in the list of choices"):
            client.predict(handle_file(str(xray)), 1, "NORMAL", 0.3, refused, api_name="/predict")


def test_a_bare_dicom_gets_the_call_of_the_same_pixels_everywhere(server: str, tiny_model_dir: Path, tmp_path) -> None:
    """A DICOM without preamble or file meta, holding a PNG's pixels: the Space, predict and evaluate read it."""
    import json

    from gradio_client import Client, handle_file

    from helpers import write_raw_dicom

    gray = xray_like(120, 100, seed=9)
    png = save_gray(tmp_path / "x.png", gray)
    dcm = write_raw_dicom(tmp_path / "x.dcm", gray.astype(np.uint16) * 257, bits=16)
    client = Client(server, verbose=False)
    calls = [client.predict(handle_file(str(p)), 1, api_name="/predict")[0] for p in (png, dcm)]
    as_dict = [{c["label"]: c["confidence"] for c in call["confidences"]} for call in calls]
    assert as_dict[0] == pytest.approx(as_dict[1], abs=1e-4)
    out = run("predict", png, dcm, "--json", "--model", tiny_model_dir)
    a, b = json.loads(out.stdout)
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    data = tmp_path / "data"
    for cls in ("BACTERIA", "NORMAL", "VIRUS"):
        save_gray(data / cls / f"{cls}.png", xray_like(seed=len(cls)))
    (data / "NORMAL" / "scan.dcm").write_bytes(dcm.read_bytes())
    report = tmp_path / "report"
    run("evaluate", data, "--model", tiny_model_dir, "--out", report)
    m = json.loads((report / "metrics.json").read_text())
    assert m["n_images"] == 4 and m["skipped"] == []


def test_model_line_names_the_model_its_version_and_its_accuracy(tiny_predictor) -> None:
    from pneumocam.deploy.space_config import model_line
    from pneumocam.paths import DEFAULT_WEIGHTS_DIR
    from pneumocam.scoring.predictor import load_predictor

    bundled = load_predictor(DEFAULT_WEIGHTS_DIR)
    line = model_line(bundled)
    assert bundled.meta.name in line and bundled.meta.weights_sha256[:12] in line
    assert f"{bundled.meta.metrics['test']['accuracy']:.1%}" in line and "/" not in line  # no server path
    assert "not yet measured" in model_line(tiny_predictor)


def test_the_shipped_examples_are_one_per_class_and_attributed() -> None:
    from pneumocam.deploy.space_config import example_files, load_space_config
    from pneumocam.paths import REPO_ROOT

    files = [Path(f).name for f in example_files(load_space_config())]
    assert len(files) == 3 and sum("bacteria" in f for f in files) == 1 and sum("virus" in f for f in files) == 1
    notes = (REPO_ROOT / "space" / "examples" / "README.md").read_text()
    assert "CC BY 4.0" in notes and "Kermany" in notes and all(f in notes for f in files)


def test_config_file_and_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"repo_id": "org/model", "revision": "abc", "concurrency_limit": 1, "unknown": 5}')
    cfg = load_space_config(path, environ={})
    assert (cfg.repo_id, cfg.revision, cfg.concurrency_limit) == ("org/model", "abc", 1)
    cfg = load_space_config(path, environ={"PNEUMOCAM_REPO_ID": "x/y", "PNEUMOCAM_REVISION": "f" * 40})
    assert (cfg.repo_id, cfg.revision) == ("x/y", "f" * 40)


def test_space_card_matches_the_pins() -> None:
    card = (REPO_ROOT / "space" / "README.md").read_text()
    front = card.split("---")[1]
    fields = dict(re.findall(r"^(\w+):\s*(.+)$", front, flags=re.M))
    pins = dict(re.findall(r"^([\w-]+)==([\w.]+)", (REPO_ROOT / "requirements.txt").read_text(), flags=re.M))
    assert fields["sdk"] == "gradio" and fields["sdk_version"] == pins["gradio"]
    assert tuple(int(v) for v in fields["python_version"].strip('"').split(".")) >= (3, 11)
    assert (REPO_ROOT / fields["app_file"]).is_file()
    config = load_space_config(environ={})
    assert config.repo_id and config.repo_id in front


def test_deploy_space_never_makes_a_space_without_a_model() -> None:
    from pneumocam.deploy.space_config import load_space_config

    assert not load_space_config().revision  # nothing published from here yet: no pinned Hub model
    refused = run("deploy-space", "--space-id", "me/pneumocam", "--dry-run", code=1)
    assert "--with-weights" in refused.stderr
    result = run("deploy-space", "--space-id", "me/pneumocam", "--dry-run", "--with-weights")
    assert "it would serve weights/ uploaded with it" in result.stdout
    listed = [line.split("\t")[0] for line in result.stdout.splitlines() if "\t" in line]
    expected = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "core").rglob("*.py")}
    expected |= {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "space" / "examples").iterdir()}
    expected |= {"space/app.py", "space/config.json", "requirements.txt", "README.md"}
    expected |= {"weights/model.keras", "weights/model.json", "weights/source_stats.npz", "weights/validity.npz"}
    assert set(listed) == expected and len(listed) == len(expected)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_in_a_real_browser(server: str, xray: Path) -> None:
    pytest.importorskip("playwright", reason="playwright is not installed (requirements-test.txt)")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server, wait_until="networkidle")
        expect(page.locator("#model-line")).to_contain_text("Serving:")
        expect(page.locator("#model-line")).to_contain_text("accuracy on the 624-image test split")
        expect(page.get_by_text("Example X-rays")).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(str(xray))
        page.wait_for_timeout(500)
        page.locator("#run").click()
        expect(page.locator("#summary")).to_contain_text("heatmaps explain", timeout=60_000)
        expect(page.locator("#summary")).to_contain_text("90% prediction set")
        expect(page.locator("#label")).to_contain_text(re.compile("BACTERIA|NORMAL|VIRUS"))
        images = page.locator("#cams img")
        expect(images.first).to_be_visible(timeout=30_000)
        from pneumocam.explain.shown import map_title
        from pneumocam.model.artifact import read_meta
        from pneumocam.paths import DEFAULT_WEIGHTS_DIR

        meta = read_meta(DEFAULT_WEIGHTS_DIR)
        audited = map_title(meta, meta.explain.method, meta.explain.score)
        assert audited.startswith("audited default: ")
        assert images.count() == 1 + meta.explain.layers  # the default map, then one per default layer
        assert images.first.get_attribute("alt").startswith(audited)  # the first image is the audited map
        expect(page.locator("#cams .caption-label").first).to_contain_text(audited)
        expect(page.locator("#slider")).to_contain_text(f"The X-ray | {audited}")
        slid = [page.locator("#slider img").nth(i).get_attribute("src") for i in range(2)]
        assert slid[1] == images.first.get_attribute("src")  # the slider compares the X-ray with that same map
        page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)

        portrait = browser.new_page(viewport={"width": 1400, "height": 1000})
        portrait.goto(server, wait_until="networkidle")
        photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        portrait.locator("input[type=file]").first.set_input_files(str(photo))
        portrait.wait_for_timeout(500)
        portrait.locator("#run").click()
        expect(portrait.locator("#summary")).to_contain_text("Not a meaningful call", timeout=60_000)
        expect(portrait.locator("#summary")).not_to_contain_text(re.compile("BACTERIA|NORMAL|VIRUS"))
        expect(portrait.locator("#details")).to_contain_text("Show anyway")
        expect(portrait.locator("#label")).to_be_hidden()  # the class headline sits in the closed section
        expect(portrait.locator("#cams")).to_be_hidden()
        portrait.locator("#details button").first.click()  # opened on request, the outputs are all there
        expect(portrait.locator("#label")).to_contain_text(re.compile("BACTERIA|NORMAL|VIRUS"))
        portrait.screenshot(path=str(ARTIFACTS / "space_flagged.png"), full_page=True)
        browser.close()
    shot = np.asarray(Image.open(ARTIFACTS / "space.png"))
    assert shot.shape[0] > 500 and shot.std() > 10


def test_server_never_opens_a_path_sent_by_the_client(server: str, xray: Path) -> None:
    """A raw API call naming a server-side file (not an upload) is refused, whatever the path."""
    import json
    import urllib.request

    call = f"{server}gradio_api/call/predict"
    for path in ("/etc/passwd", str(xray), "../../etc/hosts"):
        payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 3, "predicted class", 0.4, "gradcam"]}
        req = urllib.request.Request(call, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
        stream = urllib.request.urlopen(f"{call}/{event}", timeout=60).read().decode()
        assert "event: error" in stream and "not uploaded by a user" in stream
        assert "root:" not in stream


def test_uploads_above_the_size_limit_are_refused(server: str, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(26 * 1024 * 1024)  # above the 25 MB limit in space/config.json
    client = Client(server, verbose=False)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):  # the Space's own limit
        client.predict(handle_file(str(big)), api_name="/predict")
