"""The image loader on real files of every supported kind, and on broken ones."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import decode_bytes, save_gray, write_raw_dicom, xray_like
from pneumocam.errors import ImageLoadError
from pneumocam.images.readers import read_image


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window=None, with_pixels=True, bits: int = 12
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes that claim a huge 8-bit grayscale image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture()
def gray() -> np.ndarray:
    return xray_like(60, 48)


@pytest.mark.parametrize("suffix", [".jpeg", ".png", ".bmp"])
def test_grayscale_formats_become_rgb(tmp_path: Path, gray: np.ndarray, suffix: str) -> None:
    rgb = read_image(save_gray(tmp_path / f"x{suffix}", gray))
    assert rgb.shape == (60, 48, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    tolerance = 12 if suffix == ".jpeg" else 0
    assert np.abs(rgb[..., 0].astype(int) - gray).mean() <= tolerance


def test_sixteen_bit_png_is_windowed_to_full_range(tmp_path: Path) -> None:
    values = (np.linspace(1000, 4000, 40 * 30).reshape(40, 30)).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.shape == (40, 30, 3)
    assert rgb.min() == 0 and rgb.max() == 255
    assert np.all(np.diff(rgb[..., 0].ravel().astype(int)) >= 0)  # monotone ramp preserved


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "1"])
def test_png_modes(tmp_path: Path, gray: np.ndarray, mode: str) -> None:
    im = Image.fromarray(gray).convert(mode)
    im.save(tmp_path / "m.png")
    rgb = read_image(tmp_path / "m.png")
    assert rgb.shape == (60, 48, 3) and rgb.dtype == np.uint8
    if mode in ("RGB", "RGBA", "LA"):
        assert np.abs(rgb[..., 1].astype(int) - gray).max() <= 1


def test_cmyk_jpeg(tmp_path: Path, gray: np.ndarray) -> None:
    Image.fromarray(gray).convert("CMYK").save(tmp_path / "c.jpeg")
    rgb = read_image(tmp_path / "c.jpeg")
    assert rgb.shape == (60, 48, 3)
    assert np.corrcoef(rgb[..., 0].ravel(), gray.ravel())[0, 1] > 0.9


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((40, 60), np.uint8)
    arr[:, :30] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "r.jpeg", exif=exif, quality=95)
    rgb = read_image(tmp_path / "r.jpeg")
    assert rgb.shape[:2] == (60, 40)
    assert rgb[:25, :, 0].mean() > 200 and rgb[35:, :, 0].mean() < 50  # white half now on top


def test_dicom_monochrome2_and_1(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(0, 4000, 32), (24, 1)).astype(np.uint16)
    m2 = read_image(write_dicom(tmp_path / "a.dcm", pixels, "MONOCHROME2"))
    m1 = read_image(write_dicom(tmp_path / "b.dcm", pixels, "MONOCHROME1"))
    assert m2.shape == (24, 32, 3)
    assert m2[0, 0, 0] == 0 and m2[0, -1, 0] == round(4000 / 4095 * 255)  # scaled by the 12 stored bits
    assert np.array_equal(m1, 255 - m2)


def test_dicom_without_preamble_or_file_meta_is_read(tmp_path: Path) -> None:
    """Older CR exports: a bare dataset, no 128-byte preamble, no file meta; read with or without a .dcm name."""
    pixels = np.tile(np.linspace(0, 4095, 32), (24, 1)).astype(np.uint16)
    full = write_dicom(tmp_path / "full.dcm", pixels)
    raw = write_raw_dicom(tmp_path / "raw.dcm", pixels)
    assert raw.read_bytes()[128:132] != b"DICM"
    expected = read_image(full)
    assert np.array_equal(read_image(raw), expected)
    unnamed = tmp_path / "IMG0001"
    unnamed.write_bytes(raw.read_bytes())
    assert np.array_equal(read_image(unnamed), expected)


def test_a_dicom_holding_a_jpegs_pixels_reads_as_the_jpeg(tmp_path: Path) -> None:
    """Scaled by the stored bit depth, not stretched to the image's own min-max."""
    gray = np.clip(xray_like(60, 50).astype(int) // 2 + 40, 0, 255).astype(np.uint8)  # not spanning 0..255
    png = save_gray(tmp_path / "x.png", gray)
    dcm = write_dicom(tmp_path / "x.dcm", gray.astype(np.uint16) * 257, bits=16)
    assert np.array_equal(read_image(dcm), read_image(png))


def test_dicom_window_is_applied(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(0, 4000, 41), (8, 1)).astype(np.uint16)
    rgb = read_image(write_dicom(tmp_path / "w.dcm", pixels, window=(2000, 1000)))
    row = rgb[0, :, 0]
    assert row[:14].max() == 0 and row[-14:].min() == 255  # outside the window: clipped
    assert 0 < row[20] < 255


def test_dicom_without_pixels(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "n.dcm", np.zeros((4, 4)), with_pixels=False)
    with pytest.raises(ImageLoadError, match="no pixel data"):
        read_image(path)


def test_bytes_in_memory_decode_to_the_pixels_written(tmp_path: Path, gray: np.ndarray) -> None:
    path = save_gray(tmp_path / "x.png", gray)
    assert np.array_equal(decode_bytes(path.read_bytes(), "x.png"), np.repeat(gray[..., None], 3, axis=-1))


BROKEN = {
    "empty": (b"", "empty"),
    "text": (b"patient notes, not an image\n" * 10, "not a JPEG, PNG, BMP or DICOM"),
    "bomb": (bomb_png(40000, 40000), "pixel limit"),
    "zero": (bomb_png(0, 10), "not a JPEG|no pixels"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_raise_our_error_naming_the_file(tmp_path: Path, case: str) -> None:
    data, reason = BROKEN[case]
    path = tmp_path / f"{case}.png"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_and_bad_crc_png(tmp_path: Path, gray: np.ndarray) -> None:
    full = save_gray(tmp_path / "full.jpeg", xray_like(300, 300)).read_bytes()
    (tmp_path / "cut.jpeg").write_bytes(full[: len(full) // 2])
    png = bytearray(save_gray(tmp_path / "ok.png", gray).read_bytes())
    png[40] ^= 0xFF  # inside the first chunk after IHDR: CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(png))
    for name in ("cut.jpeg", "crc.png"):
        with pytest.raises(ImageLoadError):
            read_image(tmp_path / name)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="cannot read"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError):
        read_image(tmp_path)


def test_load_xray_gives_display_copy_and_model_input(tmp_path: Path) -> None:
    from helpers import load_xray
    from pneumocam.images.preprocess import InputSpec

    path = save_gray(tmp_path / "big.png", xray_like(900, 700))
    display, model_input = load_xray(path, InputSpec(224, 224))
    assert display.shape == (900, 700, 3) and display.dtype == np.uint8
    assert model_input.shape == (224, 224, 3) and model_input.dtype == np.float32
    assert 0 <= model_input.min() and model_input.max() <= 255
