"""Rendering one frame of a data set as a presentation-ready image (PS3.18 rendered resources).

The grayscale pipeline is PS3.3's: Modality LUT (Rescale Slope/Intercept or the Modality LUT
Sequence), then VOI (a requested window, else the data set's first Window Center/Width, else
its first VOI LUT, else the frame's own range), then MONOCHROME1 inverted. Color frames come
out as RGB: YBR converted, PALETTE COLOR through its palette. What is rendered is always 8
bits per sample, in JPEG, PNG and GIF alike: a rendered image is for display, and the
stored values themselves are at the frames and bulk data resources.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsFloat

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import UID

from dicomvault.dicom import ijg12
from dicomvault.index import Record
from dicomvault.store import Archive
from dicomvault.store.parts import InstanceParts

ijg12.keep_gdcm_out_of_pydicom()  # rendering decodes with pydicom too (see ijg12)

JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)
_PILLOW_FORMAT = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF"}
# PS3.18 spells the VOI LUT Functions of PS3.3 C.11.2.1.3 in lower case.
VOI_LUT_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
DEFAULT_QUALITY = 90
# The largest rendered image, either way, in pixels: beyond it a request costs too much memory.
MAX_VIEWPORT = 8192


class BadRenderRequest(ValueError):
    """A query parameter that cannot be honoured as given (400)."""


class NotAcceptable(ValueError):
    """None of the media types the client accepts is one we render (406)."""


class CannotRender(ValueError):
    """The stored pixel data cannot be rendered: no Pixel Data, or a transfer syntax or pixel
    format the installed pixel handlers cannot decode (415)."""


class NoPixelData(CannotRender):
    """The instance has no Pixel Data, so no rendered image (an SR, an RT Plan, a waveform):
    for DICOMweb, no representation in a media type the client accepts (406)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center and width in modality values, and a PS3.3 VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise BadRenderRequest("window center and width must be finite numbers")
        linear = self.function == "LINEAR"
        if not (self.width >= 1 if linear else self.width > 0):
            raise BadRenderRequest(
                f"window width must be {'at least 1' if linear else 'above 0'} for {self.function}"
            )

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Maps modality values to 0..255 (PS3.3 C.11.2.1.2)."""
        x = values.astype(np.float64)
        c, w = self.center, self.width
        if self.function == "SIGMOID":
            return 255 / (1 + np.exp(-4 * (x - c) / w))
        if self.function == "LINEAR_EXACT":
            return np.clip(((x - c) / w + 0.5) * 255, 0, 255)
        if w == 1:  # a threshold at c - 0.5: below it black, above it white
            return np.where(x <= c - 0.5, 0.0, 255.0)
        return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255)


@dataclass(frozen=True, slots=True)
class Viewport:
    """The rendered size (the image is fitted inside it, keeping its aspect ratio; enlarged
    to fit only if ``enlarge``) and, optionally, the source region to render: x, y, width,
    height (a negative width or height flips it)."""

    width: int
    height: int
    region: tuple[int, int, int, int] | None = None
    enlarge: bool = True


@dataclass(frozen=True, slots=True)
class Rendering:
    """What a client asked of a rendered resource."""

    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY


# Thumbnails fit in 128 × 128 pixels (PS3.18 leaves their size to the origin server).
THUMBNAIL = Viewport(128, 128, enlarge=False)


def _numbers(value: str, name: str, count: Sequence[int]) -> list[float]:
    parts = value.split(",")
    if len(parts) not in count:
        expected = " or ".join(map(str, count))
        raise BadRenderRequest(f"{name} takes {expected} comma-separated numbers: {value!r}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise BadRenderRequest(f"{name} takes numbers: {value!r}") from None


def parse_window(value: str) -> Window:
    """PS3.18 ``window=center,width,function`` (the function defaults to linear)."""
    parts = value.split(",")
    function = parts.pop().strip().lower() if len(parts) == 3 else "linear"
    if function not in VOI_LUT_FUNCTIONS:
        raise BadRenderRequest(
            f"window function must be one of {', '.join(VOI_LUT_FUNCTIONS)}: {function!r}"
        )
    center, width = _numbers(",".join(parts), "window", (2,))
    return Window(center, width, VOI_LUT_FUNCTIONS[function])


def parse_viewport(value: str) -> Viewport:
    """PS3.18 ``viewport=vw,vh[,sx,sy,sw,sh]``."""
    numbers = _numbers(value, "viewport", (2, 6))
    if any(n != int(n) for n in numbers):
        raise BadRenderRequest(f"viewport takes whole numbers of pixels: {value!r}")
    width, height, *region = (int(n) for n in numbers)
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise BadRenderRequest(f"viewport width and height must be 1..{MAX_VIEWPORT}: {value!r}")
    if not region:
        return Viewport(width, height)
    x, y, w, h = region
    if w == 0 or h == 0:
        raise BadRenderRequest(f"viewport region must not be empty: {value!r}")
    if max(abs(n) for n in region) > MAX_VIEWPORT:
        raise BadRenderRequest(f"viewport region values must be within ±{MAX_VIEWPORT}: {value!r}")
    return Viewport(width, height, (x, y, w, h))


def parse_quality(value: str) -> int:
    if not re.fullmatch(r"\d{1,3}", value) or not 1 <= int(value) <= 100:
        raise BadRenderRequest(f"quality is a number from 1 to 100: {value!r}")
    return int(value)


def negotiate(accept: str) -> str:
    """The rendered media type for an Accept header (or ``accept`` query parameter) value:
    the acceptable one of highest quality, JPEG when anything goes."""
    offers: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media in ("*/*", "image/*"):
            media = JPEG
        if media in RENDERED_MEDIA_TYPES and quality > 0:
            offers.append((-quality, position, media))
    if not offers:
        raise NotAcceptable(
            f"rendered resources are {', '.join(RENDERED_MEDIA_TYPES)}; "
            f"none is acceptable in {accept!r}"
        )
    return min(offers)[2]


def decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray, str]:
    """Frame ``index`` of ``ds`` as stored values, and its photometric interpretation after
    decoding (pydicom's decoders turn YBR_FULL JPEG into RGB)."""
    if "PixelData" not in ds:
        raise CannotRender("the instance has no Pixel Data")
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise CannotRender(f"no pixel data decoder for transfer syntax {syntax}") from None
    if not decoder.is_available:
        raise CannotRender(
            f"cannot decode {syntax.name} ({syntax}): no pixel data handler for it is installed"
        )
    try:
        values, meta = decoder.as_array(ds, index=index)
    except Exception as e:  # corrupt or unsupported pixel data: handlers raise many types
        raise CannotRender(f"cannot decode the {syntax.name} pixel data: {e}") from e
    return values, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _first(value: SupportsFloat | str | Sequence[SupportsFloat | str]) -> float:
    """The first of a possibly multi-valued number."""
    if isinstance(value, str):
        return float(value)
    if isinstance(value, Sequence):
        return float(value[0])
    return float(value)


def _stored_window(ds: Dataset) -> Window | None:
    """The data set's first window, or None when it is unusable (the next VOI source then
    applies)."""
    function = str(ds.get("VOILUTFunction", "")).upper()
    try:
        return Window(
            _first(ds.WindowCenter),
            _first(ds.WindowWidth),
            function if function in VOI_LUT_FUNCTIONS.values() else "LINEAR",
        )
    except (BadRenderRequest, ValueError, TypeError, IndexError):
        return None


def _voi(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Modality values to 0..255 by the requested window, else the data set's VOI."""
    if window is not None:
        return window.apply(values)
    stored = _stored_window(ds) if "WindowCenter" in ds and "WindowWidth" in ds else None
    if stored is not None:
        display = stored.apply(values)
        # A stored window that misses every pixel would show a blank image: as viewers do,
        # fall back to the frame's range then (a window the client asked for is obeyed).
        if display.min() != display.max() or values.min() == values.max():
            return display
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi(values, ds).astype(np.float64) * 255 / (2**bits - 1)
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape)
    return (values - low) * (255 / (high - low))


def presentation_values(ds: Dataset, index: int, window: Window | None = None) -> np.ndarray:
    """Frame ``index`` of ``ds`` as 8-bit display values: rows × columns (grayscale) or
    rows × columns × 3 (RGB)."""
    values, photometric = decode_frame(ds, index)
    try:
        return _display(values, photometric, ds, window)
    except Exception as e:  # malformed LUTs or pixel attributes: pydicom raises many types
        raise CannotRender(f"cannot render {photometric} pixel data: {e}") from e


def _display(
    values: np.ndarray, photometric: str, ds: Dataset, window: Window | None
) -> np.ndarray:
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        display = _voi(apply_modality_lut(values, ds), ds, window)
        if photometric == "MONOCHROME1":
            display = 255 - display
        return np.rint(display).astype(np.uint8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(values, ds)
        bits = 16 if rgb.dtype.itemsize > 1 else 8
    else:
        rgb = values if photometric == "RGB" else convert_color_space(values, photometric, "RGB")
        bits = int(ds.get("BitsStored", 8))
    if bits > 8:
        rgb = np.rint(rgb.astype(np.float64) * (255 / (2**bits - 1)))
    return rgb.astype(np.uint8)


def _fit(image: Image.Image, viewport: Viewport) -> Image.Image:
    if viewport.region is not None:
        x, y, w, h = viewport.region
        # A negative width or height flips the region about its x or y.
        left, right = sorted((x, x + w))
        top, bottom = sorted((y, y + h))
        image = image.crop((left, top, right, bottom))
        if w < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if h < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    if scale >= 1 and not viewport.enlarge:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def render(ds: Dataset, index: int, rendering: Rendering) -> bytes:
    """Frame ``index`` of ``ds`` encoded as ``rendering`` asks."""
    image = Image.fromarray(presentation_values(ds, index, rendering.window))
    if rendering.viewport is not None:
        image = _fit(image, rendering.viewport)
    out = io.BytesIO()
    if rendering.media_type == JPEG:
        image.save(out, "JPEG", quality=rendering.quality)
    else:
        image.save(out, _PILLOW_FORMAT[rendering.media_type])
    return out.getvalue()


def rendered_frame(archive: Archive, record: Record, number: int, rendering: Rendering) -> bytes:
    """Frame ``number`` (1-based) of an archived instance as ``rendering`` asks, read from the
    header's and that frame's blobs (FileNotFoundError: no such frame; CannotRender)."""
    parts = InstanceParts(archive, record)
    if not parts.has_pixel_data():
        raise NoPixelData("the instance has no Pixel Data: there is no image to render")
    ds, index = parts.frame_dataset(number)
    return render(ds, index, rendering)
