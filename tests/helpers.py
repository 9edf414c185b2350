"""What the tests share besides fixtures: generated X-ray-like images and folders, tiny real models, the real data's
whereabouts, and one way to run the command line."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from pneumocam.cli.app import main
from pneumocam.images.preprocess import InputSpec
from pneumocam.model.artifact import DEFAULT_CLASSES, new_meta
from pneumocam.model.network import ArchConfig
from pneumocam.paths import REPO_ROOT


def run(*args: object, code: int | None = 0) -> Result:
    """The command line in this process; with ``code``, the exit code it must end with (a traceback if not)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if code is not None and result.exit_code != code:
        trace = "" if result.exc_info is None else "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"exit code {result.exit_code}, not {code}\n{result.output}\n{trace}")
    return result


def decode_bytes(data: bytes, name: str = "<upload>") -> np.ndarray:
    """Like ``read_image`` for bytes in memory: the reader chosen from the content, as for a file."""
    from pneumocam.errors import ImageLoadError
    from pneumocam.images.readers import pick_reader

    p = Path(name)
    if not data:
        raise ImageLoadError(p, "file is empty")
    return pick_reader(data, p)(p, data)[0]


def overlay(rgb: np.ndarray, cam: np.ndarray, opacity: float) -> np.ndarray:
    """Upsample a map to ``rgb``'s size, colour-map it and blend: what every entry point shows."""
    from pneumocam.explain.overlay import blend, colorize, upsample

    h, w = rgb.shape[:2]
    return blend(rgb, colorize(upsample(cam, h, w)), opacity)


def load_xray(path: Path, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """File -> (display copy, model input), as the Explainer prepares one."""
    from pneumocam.images.preprocess import to_model_input
    from pneumocam.images.readers import read_image

    rgb = read_image(path)
    return rgb, to_model_input(rgb, spec)


def write_raw_dicom(path: Path, pixels: np.ndarray, bits: int = 12) -> Path:
    """A bare implicit-VR little-endian dataset: no preamble, no DICM magic, no file meta."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    with open(path, "wb") as raw:
        f = DicomFileLike(raw)
        f.is_implicit_VR, f.is_little_endian = True, True
        write_dataset(f, ds)
    return path


SHARED = Path(os.environ.get("PNEUMOCAM_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data" / "chest_xray"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"

requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "test").is_dir() or not SHARED_WEIGHTS.is_file(),
    reason=f"real data/weights not found in {SHARED} (set PNEUMOCAM_SHARED to the shared folder)",
)

TINY_SPEC = InputSpec(height=64, width=64)
TINY_ARCH = ArchConfig(alpha=0.35, dense_units=(8,), dropout=0.1)


def xray_like(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    """A grayscale image with two bright 'lungs' and noise: structure for the model and CAM to see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 60 * (yy / h)
    for cx in (0.3 * w, 0.7 * w):
        img += 120 * (((xx - cx) / (0.18 * w)) ** 2 + ((yy - 0.5 * h) / (0.35 * h)) ** 2 < 1)
    img += rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def save_gray(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_dataset(root: Path, layout: str = "download", per_class: int = 4) -> dict[str, int]:
    """Write a small labelled folder in either layout; returns the counts per class."""
    counts = {}
    for k, cls in enumerate(DEFAULT_CLASSES):
        for i in range(per_class + k):
            arr = xray_like(seed=100 * k + i)
            if layout == "three-folder":
                path = root / cls / f"img_{cls.lower()}_{i}.jpeg"
            elif cls == "NORMAL":
                path = root / "NORMAL" / f"IM-{k}{i:03d}-0001.jpeg"
            else:
                path = root / "PNEUMONIA" / f"person{k}{i}_{cls.lower()}_{i}.jpeg"
            save_gray(path, arr)
        counts[cls] = per_class + k
    return counts


def calibrate_batchnorm(backbone: keras.Model, x: np.ndarray) -> None:
    """Set each batch norm's moving statistics to those of its input on ``x``, shallow to deep.

    A randomly initialised MobileNetV2 shrinks its activations towards zero with
    depth; normalising them this way gives a tiny random backbone the O(1)
    activations of a trained one, so tests exercise realistic numbers.
    """
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            acts = keras.Model(backbone.inputs[0], layer.input)(x, training=False).numpy()
            gamma, beta, _, _ = layer.get_weights()
            mean = acts.mean(axis=(0, 1, 2))
            var = acts.var(axis=(0, 1, 2)) + 1e-6
            layer.set_weights([gamma, beta, mean, var])


def served(model: keras.Model, spec: InputSpec = TINY_SPEC):
    """A freshly built model (no folder yet) as a Predictor, served as its metadata says."""
    from pneumocam.scoring.predictor import Predictor

    return Predictor.in_memory(model, new_meta(model, TINY_ARCH, spec, list(DEFAULT_CLASSES)))


def tiny_validity(model: keras.Model) -> tuple:
    """Validity statistics for a tiny model, fitted as training fits them, on X-ray-like images made here."""
    from pneumocam.model import validity
    from pneumocam.options import VALIDITY_LAYER
    from pneumocam.scoring.forward import compile_forward

    def summaries(seeds: range) -> np.ndarray:
        x = np.stack([np.repeat(xray_like(64, 64, seed=i)[..., None], 3, -1) for i in seeds]).astype("float32")
        return compile_forward(model, summary_layer=VALIDITY_LAYER)(x)[1].numpy()

    train, val = summaries(range(1000, 1048)), summaries(range(2000, 2020))
    stats = validity.fit(train, np.arange(len(train)) % 3, val, VALIDITY_LAYER)
    return stats, validity.record(stats, train, val, "X-ray-like images made by the tests")


def adaptable_copy(out: Path, model_dir: Path, data: Path) -> Path:
    """A copy of a model folder with training statistics measured on ``data``'s training split, stored as training
    stores them (what adaptation maps back to)."""
    import shutil

    from pneumocam.images.data import scan_dataset
    from pneumocam.model.artifact import store_source_stats, update
    from pneumocam.scoring.predictor import load_predictor
    from pneumocam.training.completion import source_statistics
    from pneumocam.training.split import recorded_split, split_by_patient

    shutil.copytree(model_dir, out)
    predictor = load_predictor(out)
    train, _ = split_by_patient(scan_dataset(data).samples, *recorded_split(predictor.meta.training))
    stats = source_statistics(predictor, [s.path for s in train])
    update(out, lambda meta: store_source_stats(out, meta, stats))
    return out


def recorded_folds(directory: Path, split: dict) -> dict[str, int]:
    """The per-image folds of a split ``model.json`` records: in the file it names, under their SHA-256."""
    import hashlib
    import json

    ref = split["folds"]
    folds = json.loads((Path(directory) / ref["file"]).read_text())[ref["sha256"]]
    assert hashlib.sha256(json.dumps(folds, sort_keys=True).encode()).hexdigest() == ref["sha256"]
    return folds


def site_fixtures(name: str, per_class: int) -> tuple:
    """A test module's ``site_data`` (a generated labelled folder) and ``adaptable_dir`` fixtures.

    ``adaptable_dir`` is the tiny model with training statistics measured on ``site_data`` (what adaptation needs).
    """

    @pytest.fixture(scope="module")
    def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
        root = tmp_path_factory.mktemp(name) / "data"
        make_dataset(root, "download", per_class=per_class)
        return root

    @pytest.fixture(scope="module")
    def adaptable_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, site_data: Path) -> Path:
        return adaptable_copy(tmp_path_factory.mktemp("adaptable") / "model", tiny_model_dir, site_data)

    return site_data, adaptable_dir
