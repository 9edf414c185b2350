"""The heatmap audit on models whose evidence is known: a patch, the border, a trained tiny MobileNetV2."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from helpers import run, save_gray
from pneumocam.config import FEATURES_LAYER, LOGITS_LAYER, ArchConfig, InputSpec
from pneumocam.errors import InputError
from pneumocam.explain.audit import AuditPlan, audit_images
from pneumocam.explain.audit_result import AuditResult, AuditRow, Heatmaps, Recommendation
from pneumocam.explain.faithfulness import border_share, random_map
from pneumocam.explain.gradcam import GradCAM
from pneumocam.explain.road import LERF, MORF, road_area, road_curves
from pneumocam.model.artifact import DEFAULT_CLASSES, LoadedModel, ModelMeta, read_meta
from pneumocam.options import ROAD_FINALISTS
from pneumocam.reports.audit_report import AUDIT_FILES
from pneumocam.scoring.forward import compile_forward
from pneumocam.scoring.predictor import Predictor, load_predictor

SIZE = 32
PATCH = (slice(4, 12), slice(18, 26))  # rows 4-11, columns 18-25
SHARES = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def known_evidence_model(where: str) -> Predictor:
    """Bright pixels in one region (the patch, or the border) push class 0 up; nothing else counts.

    The region is cut out before the explained conv layer, so its activations
    are zero everywhere else.
    """
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    top, bottom = PATCH[0].start, SIZE - PATCH[0].stop
    left, right = PATCH[1].start, SIZE - PATCH[1].stop
    if where == "patch":
        margins = ((top, bottom), (left, right))
        region = layers.ZeroPadding2D(margins)(layers.Cropping2D(margins)(inp))
    else:
        inner = layers.ZeroPadding2D(4)(layers.Cropping2D(4)(inp))
        region = layers.Subtract()([inp, inner])
    conv = layers.Conv2D(1, 1, activation="relu", use_bias=False, name="conv")
    pooled = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(conv(region))
    dense = layers.Dense(3, name=LOGITS_LAYER)
    model = keras.Model(inp, layers.Activation("softmax")(dense(pooled)))
    conv.set_weights([np.full((1, 1, 3, 1), 1 / (3 * 255), np.float32)])
    dense.set_weights([np.array([[100.0, 0.0, -100.0]], np.float32), np.array([0.0, 1.0, 0.0], np.float32)])
    meta = ModelMeta(
        classes=list(DEFAULT_CLASSES),
        input=InputSpec(SIZE, SIZE, jpeg_quality=None),
        arch=ArchConfig(),
        gradcam_layers=["conv"],
    )
    return Predictor.of(LoadedModel(model=model, meta=meta, source=where, directory=Path(".")))


def images(n: int, bright: tuple[slice, slice] | None = PATCH, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 100, (n, SIZE, SIZE, 1))
    if bright is not None:
        x[:, bright[0], bright[1]] = rng.uniform(150, 255, (n, 8, 8, 1))
    return np.repeat(x, 3, -1).astype(np.float32)


def test_gradcam_finds_the_patch_and_removing_it_first_beats_a_random_order() -> None:
    loaded = known_evidence_model("patch")
    x = images(6)
    result = GradCAM(loaded.model, ["conv"])(x)
    forward = compile_forward(loaded.model)

    def probabilities(batch: np.ndarray) -> np.ndarray:
        return forward(batch).numpy()

    for i, cam in enumerate(result.maps[0]):
        r, c = np.unravel_index(np.argmax(cam), cam.shape)
        assert PATCH[0].start <= r < PATCH[0].stop and PATCH[1].start <= c < PATCH[1].stop
        cls = int(result.target_classes[i])
        assert cls == 0
        maps = [cam, random_map(cam.shape, i)]
        morf = road_curves(probabilities, x[i], maps, cls, SHARES, MORF, SIZE, 0.0, i)
        assert morf[0, 0] == pytest.approx(morf[1, 0])  # both start from the untouched image
        assert road_area(morf[0], SHARES)[0] < road_area(morf[1], SHARES)[0] - 0.1
        lerf = road_curves(probabilities, x[i], maps, cls, SHARES, LERF, SIZE, 0.0, i)
        assert road_area(lerf[0], SHARES)[0] > road_area(lerf[1], SHARES)[0]


def test_border_share_of_simple_maps() -> None:
    flat = np.ones((100, 100))
    assert border_share(flat, 0.1) == pytest.approx(1 - 0.8 * 0.8)
    ring = np.zeros((100, 100))
    ring[:5] = 1
    assert border_share(ring, 0.1) == 1.0
    assert border_share(np.zeros((10, 10))) == 0.0


def write_images(root: Path, x: np.ndarray) -> list[Path]:
    return [
        save_gray(root / "NORMAL" / f"IM-{i:04d}-0001.png", img[..., 0].astype(np.uint8)) for i, img in enumerate(x)
    ]


def test_a_model_that_looks_at_the_border_gets_its_images_flagged(tmp_path: Path) -> None:
    x = images(4, bright=None, seed=3)
    x[:, :3] = 250  # a bright band at the top: where a marker would sit
    border = audit_images(known_evidence_model("border"), write_images(tmp_path / "b", x), AuditPlan(n_layers=1))
    assert len(border.border.flagged) == 4
    assert min(border.border.share.values()) > 0.8  # the model looks 4 px deep, the band is 3 px
    both = AuditPlan(n_layers=1, scores=("logit", "log-probability"))
    patch = audit_images(known_evidence_model("patch"), write_images(tmp_path / "p", images(4)), both)
    assert patch.border.flagged == [] and max(patch.border.share.values()) < 0.1
    road = patch.road
    assert road["grid"] == SIZE  # never finer than the image
    for name in ("gradcam", "gradcam (log-probability)"):
        assert (
            road[name]["morf_auc"] < road["random"]["morf_auc"] and road[name]["morf_auc"] < road["center"]["morf_auc"]
        )
        assert road[name]["lerf_auc"] > road["random"]["lerf_auc"]
    assert set(road["gradcam"]["sets"]["last 1 conv"]["per_class"]) == {"BACTERIA"}


def test_a_map_without_evidence_is_captioned_never_an_empty_panel_and_the_audit_counts_it(tmp_path: Path) -> None:
    from pneumocam.explain.explainer import Explainer

    model = known_evidence_model("patch")
    plain = images(2, bright=None, seed=5)
    plain[:, PATCH[0], PATCH[1]] = 0  # nothing where the model looks
    x = np.concatenate([images(2), plain]).astype(np.uint8)
    shown = Explainer(model).explain(list(x))
    # With the patch: BACTERIA, and the map finds it. Without: NORMAL, whose logit no pixel moves (weight 0).
    assert [e.predicted for e in shown] == ["BACTERIA", "BACTERIA", "NORMAL", "NORMAL"]
    for e in shown[:2]:
        assert not e.default.empty and not e.default.caption.endswith("at this layer")
        assert not np.array_equal(e.default.overlay, e.image)
    for e in shown[2:]:
        assert e.default.empty and all(p.empty for p in e.panels)
        assert e.default.caption.endswith("no evidence for NORMAL at this layer")
        assert np.array_equal(e.default.overlay, e.image)  # the plain X-ray with its caption, not a blue panel
    against = Explainer(model).explain(list(x[:1]), target="VIRUS")[0]  # the patch argues against VIRUS
    assert against.default.empty and against.default.caption.endswith("no evidence for VIRUS at this layer")

    plan = AuditPlan(methods=("gradcam",), scores=("logit",), n_layers=1, shares=(0.2, 0.5))
    result = audit_images(model, write_images(tmp_path, x), plan)
    assert [r.empty_share for r in result.table] == [0.5]
    assert result.blank_layers == {"gradcam": {"conv": 0.5}}


def test_randomising_the_head_of_a_trained_model_breaks_the_maps(trained_tiny) -> None:
    data, model_dir = trained_tiny
    loaded = load_predictor(model_dir)
    paths = sorted(data.rglob("*.jpeg"))[:8]
    result = audit_images(loaded, paths, AuditPlan(methods=("gradcam", "hirescam"), n_layers=2, blocks=2))
    assert result.randomisation_stages == ["head", "Conv_1", "block_16"]
    decided = 0
    for method in ("gradcam", "hirescam"):
        for layer, entry in result.sanity[method].items():
            # At 64 px the deepest maps are 2x2: a rank correlation over 4 cells cannot show decorrelation.
            if np.prod(loaded.model.get_layer(layer).output.shape[1:3]) >= 16:
                assert entry.rho_after_head < 0.5, (method, layer, entry)
                decided += 1
            cascade = {"head", "Conv_1", "block_16"} if method == result.cascade else {"head"}
            assert set(entry.rho) == cascade  # the whole cascade for the model's default only
            assert entry.passes == (entry.rho_after_head < result.sanity_threshold)
            assert all(0 <= v <= 1 for v in entry.ssim.values())
    assert decided >= 2
    assert loaded.model.get_layer(LOGITS_LAYER).get_weights()[0].std() > 0  # the loaded model itself untouched
    again = load_predictor(model_dir)
    np.testing.assert_array_equal(
        loaded.model.get_layer(LOGITS_LAYER).get_weights()[0], again.model.get_layer(LOGITS_LAYER).get_weights()[0]
    )


def test_audit_cli_writes_the_report(trained_tiny, tmp_path: Path) -> None:
    data, model_dir = trained_tiny
    out = tmp_path / "audit"
    args = ["audit", data, "--model", model_dir, "--limit", 5, "--layers", 2, "--out", out]
    result = run(*args)
    assert "recommended:" in result.output
    assert {p.name for p in out.iterdir()} <= set(AUDIT_FILES) and {"audit.json", "index.html"} <= {
        p.name for p in out.iterdir()
    }
    audit = json.loads((out / "audit.json").read_text())
    assert audit["n_images"] == 5
    assert audit["layer_sets"] == {
        "last 2 conv": ["block_16_project", "out_relu"],
        "out_relu": ["out_relu"],
        "block_13_expand + out_relu": ["block_13_expand", "out_relu"],
    }
    assert len(audit["table"]) == 4 * 3  # each method, explaining the model's own score, on each set
    assert {r["score"] for r in audit["table"]} == {read_meta(model_dir).explain.score}
    for method in ("gradcam", "gradcam++", "hirescam", "layercam"):
        assert set(audit["sanity"][method]) == {"block_16_project", "block_13_expand", "out_relu"}
        assert 0 <= audit["sanity"][method]["block_13_expand"]["rho_after_head"] <= 1
        stages = set(audit["sanity"][method]["out_relu"]["rho"])
        assert stages == (set(audit["randomisation_stages"]) if method == audit["cascade"] else {"head"})
    border = (audit["border"]["method"], audit["border"]["score"], audit["border"]["layer_set"])
    for row in audit["table"]:
        name = row["method"] if row["score"] == "logit" else f"{row['method']} ({row['score']})"
        measured = row["sanity_pass"] or (row["method"], row["score"], row["layer_set"]) == border
        assert (row["morf_auc"] is not None) == measured, row  # faithfulness only where sanity passed
        if measured:
            entry = audit["road"][name]["sets"][row["layer_set"]]
            assert all(0 <= entry[k] <= 1 for k in ("morf_auc", "lerf_auc"))
            assert row["road_gap"] == pytest.approx(row["lerf_auc"] - row["morf_auc"])
    assert len(audit["road"]["gradcam"]["sets"]["last 2 conv"]["morf_curve"]) == len(audit["road"]["shares"]) + 1
    for baseline in ("random", "center"):
        assert {"morf_auc", "lerf_auc", "per_class"} <= set(audit["road"][baseline])
    assert isinstance(audit["border_flagged"], list)
    rec = audit["recommendation"]
    passing = [r for r in audit["table"] if r["sanity_pass"]]
    full = [r for r in audit["table"] if r["road_images"] == audit["n_images"]]  # ROAD's second round
    assert 1 <= len(full) <= 1 + ROAD_FINALISTS and border in {(r["method"], r["score"], r["layer_set"]) for r in full}
    assert all(r["road_images"] == 3 for r in audit["table"] if r["morf_auc"] is not None and r not in full)
    assert audit["road"]["random"]["n_images"] == audit["road"]["center"]["n_images"] == 5
    passing = [r for r in passing if r in full]
    if passing:  # the best row that passes, measured on every image; else the model's own default
        assert (rec["method"], rec["score"], rec["layer_set"]) == tuple(
            passing[0][k] for k in ("method", "score", "layer_set")
        )
        assert passing[0]["road_gap"] == max(r["road_gap"] for r in passing)
    else:  # the model's own default heatmaps, named by their layers when --layers leaves them out of the sets
        meta = read_meta(model_dir)
        assert (rec["method"], rec["layers"], rec["is_default"]) == (meta.explain.method, meta.shown_layers(), True)
    assert "ROAD" in result.output and "MoRF" in result.output
    html = (out / "index.html").read_text()
    assert "sanity.png" in html and "curves.png" in html and rec["method"] in html
    for png in ("sanity.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    bad = run("audit", data, "--model", model_dir, "--methods", "gradcam,guess", code=1)
    assert "unknown CAM method 'guess'" in bad.output
    (out / "notes.txt").write_text("mine")  # a folder holding other files is not replaced
    again = run(*args, code=1)
    assert "--overwrite" in again.output and (out / "notes.txt").exists()


def recommending(result: AuditResult, row: AuditRow) -> AuditResult:
    """``result`` as if the audit had recommended ``row``: what --record does with any row."""
    rec = Recommendation(row.method, row.score, row.layer_set, row.layers, row.road_gap, False, "test")
    return replace(result, recommendation=rec)


def test_record_makes_a_passing_recommendation_the_models_default(trained_tiny, tmp_path: Path) -> None:
    import shutil

    from pneumocam.explain.audit_choice import explain_defaults, models_default, recommend
    from pneumocam.explain.explainer import Explainer
    from pneumocam.model.artifact import record_explain
    from pneumocam.reports.card import model_card

    data, model_dir = trained_tiny
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    loaded = load_predictor(copy)
    plan = AuditPlan(methods=("hirescam",), scores=("log-probability",), shares=(0.2, 0.5))
    result = audit_images(loaded, sorted(data.rglob("*.jpeg"))[:4], plan)
    rows = {r.layer_set: r for r in result.table}
    assert set(rows) == {"last 3 conv", "out_relu", "block_13_expand + out_relu"}
    layers, defaults = explain_defaults(recommending(result, rows["out_relu"]), loaded)
    record_explain(copy, layers, defaults)
    again = load_predictor(copy)
    explain = again.meta.explain
    assert (explain.method, explain.score, explain.layers, explain.layer_names) == (
        "hirescam",
        "log-probability",
        1,
        (),
    )
    assert explain.audit["table"] == [asdict(r) for r in result.table] and explain.audit["road"]["shares"] == [0.2, 0.5]
    assert explain.audit["recommendation"]["layer_set"] == "out_relu"
    shown = Explainer(again).explain_file(sorted(data.rglob("*.jpeg"))[0])
    assert shown.layer_names == ["out_relu"]
    todays = models_default(again, result.layer_sets)  # "today's default" is the model's own now
    assert todays == Heatmaps("hirescam", "log-probability", "out_relu", ["out_relu"])
    assert recommend(rows["out_relu"], todays).is_default and not recommend(rows["last 3 conv"], todays).is_default
    assert recommend(None, todays).layers == ["out_relu"] and recommend(None, todays).is_default
    audited = audit_images(again, sorted(data.rglob("*.jpeg"))[:2], AuditPlan(methods=("gradcam", "hirescam")))
    border = audited.border
    assert (border.method, border.score, border.layer_set) == ("hirescam", "log-probability", "out_relu")

    fused = rows["block_13_expand + out_relu"]  # not the last N layers: recorded by name
    result = recommending(result, fused)
    record_explain(copy, *explain_defaults(result, loaded))
    named = load_predictor(copy)
    assert named.meta.explain.layer_names == ("block_13_expand", "out_relu") and named.meta.explain.layers == 2
    assert named.meta.shown_layers() == ["block_13_expand", "out_relu"] == named.meta.shown_layers(2)
    assert named.meta.shown_layers(1) == ["out_relu"]  # another count: the last N, as before
    shown = Explainer(named).explain_file(sorted(data.rglob("*.jpeg"))[0])
    assert shown.layer_names == ["block_13_expand", "out_relu"] and shown.heatmaps[0].shape == shown.image.shape[:2]
    assert shown.default.title == "audited default: HiResCAM, block_13_expand + out_relu"
    assert result.served == {"input": named.spec.describe(), "views": list(named.views)}

    # The map served first is the map the audit measured for the recommended set: one image at the model's size.
    from pneumocam.explain.audit import set_map
    from pneumocam.explain.gradcam import METHODS

    rec = result.recommendation
    side = named.spec.height
    one = save_gray(
        tmp_path / "one.png", np.asarray(Image.open(sorted(data.rglob("*.jpeg"))[1]).convert("L").resize((side, side)))
    )
    x = np.concatenate([b.images for b in named.batches([one])])
    measured = dict(zip(rec.layers, METHODS[rec.method].serving(named, rec.layers, rec.score)(x).maps))
    served = Explainer(named).explain_file(one)
    assert served.heatmap.shape == (side, side)
    np.testing.assert_allclose(served.heatmap, set_map(measured, rec.layers, 0, (side, side)), atol=1e-5)
    card = model_card(named.meta)
    assert "ROAD MoRF" in card and "explaining the log-probability" in card
    with pytest.raises(InputError, match="not explainable layers"):
        explain_defaults(recommending(result, replace(fused, layers=["dense"])), loaded)
