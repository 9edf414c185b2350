"""Reading X-ray files into RGB arrays: one reader per format, one entry point.

Every entry point (evaluate, gallery, predict, the Space) calls
:func:`read_image`, so a file is decoded the same way everywhere. Whatever the
encoding (8/16-bit, grayscale, palette, CMYK, alpha, DICOM), the result is an
``HxWx3`` ``uint8`` RGB array in display orientation (EXIF applied); anything
unusable raises :class:`~pneumocam.errors.ImageLoadError`.
"""

from __future__ import annotations

import io
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumocam.errors import ImageLoadError

#: Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 150_000_000
#: Refuse files above this size before reading them.
MAX_FILE_BYTES = 512 * 1024 * 1024

RASTER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES

_PIL_FORMATS = ("JPEG", "PNG", "BMP")
_DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class Header:
    """What a file says about itself (DICOM tags; empty for JPEG, PNG and BMP), for the validity checks."""

    modality: str = ""
    body_part: str = ""
    view: str = ""
    age_years: float | None = None  # the patient's age at the study, when the file says it


def is_image_name(path: str | Path) -> bool:
    """True for names we try to read: a known image suffix and not hidden."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def window_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch any numeric array linearly onto 0..255 (min to 0, max to 255).

    Used for 16-bit PNG exports and DICOM, whose useful range rarely spans the
    whole integer type. A constant image maps to zeros rather than NaN.
    """
    v = values.astype(np.float64, copy=False)
    lo, hi = float(np.min(v)), float(np.max(v))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.round((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Replicate one channel three times: the backbone expects RGB."""
    return np.repeat(gray[..., None], 3, axis=-1)


def _check_dimensions(path: Path, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageLoadError(path, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            path,
            f"image is {width}x{height} pixels, above the {MAX_PIXELS:,} pixel limit (possible decompression bomb)",
        )


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any decoded PIL image to RGB uint8, high bit depths windowed."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return gray_to_rgb(window_to_uint8(np.asarray(im)))
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "L":
        return gray_to_rgb(np.asarray(im))
    return np.asarray(im.convert("RGB"))


def read_raster(path: Path, data: bytes) -> tuple[np.ndarray, Header]:
    """JPEG, PNG or BMP through Pillow, dimensions checked before decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
                _check_dimensions(path, *im.size)
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _pil_to_rgb(im)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(path, f"image above the pixel limit, possible decompression bomb ({exc})") from exc
        except Image.UnidentifiedImageError as exc:
            raise ImageLoadError(path, "not a JPEG, PNG, BMP or DICOM image") from exc
        except Exception as exc:  # Pillow raises many types for corrupt data
            raise ImageLoadError(path, f"corrupt or truncated image ({_describe(exc)})") from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8), Header()


def dicom_range(ds: object) -> tuple[float, float]:
    """The value range a grayscale DICOM's pixels can take once its modality and VOI transforms are applied.

    A VOI LUT table outputs its own bit depth; otherwise (windowed or not) the
    stored bit depth, signed or not, through the rescale slope and intercept,
    as the standard defines (PS3.3 C.11.2.1.2) and pydicom computes it.
    """
    voi = ds.get("VOILUTSequence")
    if voi and "WindowCenter" not in ds:
        return 0.0, float(2 ** int(voi[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 16))
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return tuple(sorted((lo * slope + intercept, hi * slope + intercept)))  # type: ignore[return-value]


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo..hi`` linearly onto 0..255 (values outside are clipped)."""
    v = (values.astype(np.float64, copy=False) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.round(np.clip(v, 0, 255)).astype(np.uint8)


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_DATE_TAGS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _dicom_date(value: object) -> date | None:
    text = str(value or "").strip()[:8]
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def patient_age(ds: object) -> float | None:
    """The patient's age in years: ``PatientAge`` (``nnnD/W/M/Y``), else ``PatientBirthDate`` against the study's
    date; None when the file says neither (or says it malformed: a tag that cannot be read is no evidence).
    """
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) >= 2 and age[:-1].isdigit() and age[-1] in _AGE_UNITS:
        return int(age[:-1]) * _AGE_UNITS[age[-1]]
    born = _dicom_date(ds.get("PatientBirthDate"))
    studied = next((d for t in _DATE_TAGS if (d := _dicom_date(ds.get(t)))), None)
    if born is None or studied is None or studied < born:
        return None
    return (studied - born).days / 365.25


def dicom_header(ds: object) -> Header:
    """Modality, body part, view position and the patient's age, as the file states them."""
    tags = (str(ds.get(tag, "") or "").strip() for tag in ("Modality", "BodyPartExamined", "ViewPosition"))
    return Header(*tags, age_years=patient_age(ds))


def read_dicom(path: Path, data: bytes) -> tuple[np.ndarray, Header]:
    """DICOM through pydicom: modality LUT, then the window or VOI LUT the file has, MONOCHROME1 inverted.

    The result is scaled from the range those transforms can output (the
    stored bit depth without a window), never stretched to the image's own
    min-max: a DICOM holding an 8-bit image's pixels then looks exactly like
    that image. Files without the 128-byte preamble and file meta (older CR
    exports) are read too.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # the default of raw datasets
    except Exception as exc:
        raise ImageLoadError(path, f"unreadable DICOM ({_describe(exc)})") from exc
    if "PixelData" not in ds:
        raise ImageLoadError(path, "DICOM file has no pixel data")
    _check_dimensions(path, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)))
    try:
        pixels = ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]
        if photometric.startswith("MONOCHROME"):
            values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
            gray = scale_to_uint8(values, *dicom_range(ds))
            if photometric == "MONOCHROME1":
                gray = 255 - gray
            return gray_to_rgb(gray), dicom_header(ds)
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            return (pixels if pixels.dtype == np.uint8 else window_to_uint8(pixels)), dicom_header(ds)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(path, f"cannot decode DICOM pixels ({_describe(exc)})") from exc
    raise ImageLoadError(path, f"unsupported DICOM photometric interpretation {photometric}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_dicom(data: bytes) -> bool:
    """The DICM magic after the preamble, or a raw dataset (no preamble) opening on group 0002 or 0008."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM" or data[:2] in (b"\x02\x00", b"\x08\x00")


def _read_bytes(path: Path) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(path, "is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file")
        size = info.st_size
        if size > MAX_FILE_BYTES:
            raise ImageLoadError(path, f"file is {size:,} bytes, above the {MAX_FILE_BYTES:,} limit")
        data = path.read_bytes()
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or _describe(exc)})") from exc
    if not data:
        raise ImageLoadError(path, "file is empty")
    return data


Reader = Callable[[Path, bytes], tuple[np.ndarray, Header]]


def pick_reader(data: bytes, path: Path) -> Reader:
    """Choose the reader from the file's content (magic bytes), not its name."""
    if _is_dicom(data) or path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom
    return read_raster


def read_image_and_header(path: str | Path) -> tuple[np.ndarray, Header]:
    """Decode one file into an ``HxWx3`` uint8 RGB array in display orientation, and what its header says."""
    p = Path(path)
    data = _read_bytes(p)
    return pick_reader(data, p)(p, data)


def read_image(path: str | Path) -> np.ndarray:
    """Decode one file into an ``HxWx3`` uint8 RGB array in display orientation."""
    return read_image_and_header(path)[0]
