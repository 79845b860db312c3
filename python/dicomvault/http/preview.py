"""One frame of an instance rendered as an 8-bit PNG for display (windowed, as a viewer would)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array


def render_png(data: bytes, frame: int) -> bytes:
    """Frame ``frame`` (1-based) of the Part 10 file ``data`` as PNG (IndexError: no such frame;
    ValueError: no image, or pixels that cannot be decoded)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("the instance holds no image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise IndexError(f"frame {frame} is not in 1..{frames}")
    try:
        # Only that frame is decoded, whatever the instance's size.
        pixels = pixel_array(ds, index=frame - 1)
    except Exception as e:  # pixel handlers and missing plugins raise many types
        raise ValueError(f"cannot decode the pixel data: {e}") from e
    if pixels.ndim == 3:  # samples per pixel > 1: pydicom has converted YBR to RGB
        image = Image.fromarray(_stretched(pixels.astype(np.float64)), "RGB")
    else:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        if "VOILUTSequence" in ds:
            gray = _stretched(np.asarray(apply_voi_lut(values, ds), dtype=np.float64))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            gray = _windowed(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
            if gray.min() == gray.max():  # a window that misses every pixel would show nothing
                gray = _stretched(values)
        else:
            gray = _stretched(values)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            gray = 255 - gray
        image = Image.fromarray(gray, "L")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _first(value: object) -> float:
    """A window's first center or width (the attributes may hold several)."""
    return float(value[0] if isinstance(value, list | tuple | MultiValue) else value)


def _windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The LINEAR VOI function of PS3.3 C.11.2.1.2.1 onto 0..255."""
    scaled = ((values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5) * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretched(values: np.ndarray) -> np.ndarray:
    """The values' own range onto 0..255."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
