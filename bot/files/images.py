"""Images made the size vision models use: at most ``max_side`` pixels on the long side and
``max_pixels`` in all (what Claude and GPT-4o-class models work at anyway; more only costs
tokens and upload time), upright (EXIF orientation applied), metadata dropped (no GPS position
reaches the model), the first frame of an animation, as JPEG or PNG.

    shrunk = downscale(phone_photo, max_side=1568, max_pixels=1_150_000)
    shrunk.mime, shrunk.width, shrunk.height, len(shrunk.data)   # 'image/jpeg', 1238, 928, …

A JPEG is decoded at a reduced scale where that still covers the target (cheap in time and
memory even for 100+ MP photos); other formats over ``max_source_pixels`` are refused, as is
anything Pillow considers a decompression bomb. A source in another mode than RGB(A) or grey (a
palette, grey with alpha, 16-bit) is widened band by band as it is shrunk, so no full-size copy
in a wider mode exists; ``decode_pixels(data)`` is what decoding costs, for callers that bound
decodes by pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from bot.files.attachment import Unreadable

MAX_SIDE = 1568
MAX_PIXELS = 1_150_000
MAX_SOURCE_PIXELS = 20_000_000  # decoded at full size (not a JPEG): 80 MB as RGB(A)
JPEG_QUALITY = 85
# A PNG bigger than this is probably a photo: JPEG says the same in a fraction of the bytes.
PNG_BUDGET = 1_000_000
# A PNG with transparency bigger than this is flattened onto white as a JPEG: kept as PNG it
# would not fit the store's file cache (1 MB an entry) and be downloaded on every follow-up.
ALPHA_PNG_BUDGET = 600_000
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ENCODABLE_MODES = ("RGB", "L", "RGBA")
_BAND_PIXELS = 1_000_000  # pixels widened at a time: 4 MB as RGBA
# EXIF orientation → the transposition that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class Downscaled:
    data: bytes
    mime: str  # image/jpeg or image/png
    width: int
    height: int


def downscale(
    data: bytes,
    *,
    name: str = "the image",
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> Downscaled:
    """``data`` (PNG, JPEG, GIF, WebP) re-encoded within the limits; ``Unreadable`` when it
    cannot be decoded or is too large to decode safely."""
    try:
        # (not closed: a file in memory holds nothing to release, and the image may be used
        # as it is)
        opened = Image.open(io.BytesIO(data))
        width, height = opened.size
        target = _fit(width, height, max_side, max_pixels)
        if opened.format == "JPEG":
            opened.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale when that covers it
        elif width * height > max_source_pixels:
            raise Unreadable(f"{name} has too many pixels for me to open.")
        jpeg_source = opened.format == "JPEG"
        opened.seek(0)  # an animation: its first frame
        opened.load()
        orientation = opened.getexif().get(0x0112)
        image = _widened(opened, target)
    except Image.DecompressionBombError:
        raise Unreadable(f"{name} has too many pixels for me to open.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise Unreadable(f"{name} looks like an image, but I couldn't decode it.") from None
    if image.size != target:
        # (``reducing_gap``: a whole-factor reduction first, then the fine resize)
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    return _encoded(image, prefer_jpeg=jpeg_source)


def decode_pixels(
    data: bytes,
    *,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> int:
    """How many pixels ``downscale`` decodes for ``data`` (a JPEG at its reduced scale), from
    the header alone; 0 when none are (a header that cannot be read, an image refused)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format == "JPEG":
                opened.draft(None, _fit(*opened.size, max_side, max_pixels))
            width, height = opened.size
    except (
        Image.DecompressionBombError,
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
    ):
        return 0
    return width * height if width * height <= max_source_pixels else 0


def _fit(width: int, height: int, max_side: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio within both limits (never larger)."""
    scale = min(
        1.0, max_side / max(width, height, 1), math.sqrt(max_pixels / max(width * height, 1))
    )
    if scale >= 1.0:
        return width, height
    # (the epsilon: 3000 × 1568/3000 is 1567.9999… in floating point)
    return max(1, math.floor(width * scale + 1e-6)), max(1, math.floor(height * scale + 1e-6))


def _widened(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` in a mode the encoders take. One in another mode (a palette, grey with alpha,
    16-bit) that is larger than ``target`` is widened band by band, each band resized across to
    ``target``'s width before the next is widened: the result is ``target``'s width and the
    source's height, what the first pass of a full resize (horizontal, then vertical) makes."""
    if image.mode in _ENCODABLE_MODES or image.width <= target[0]:
        return _normalised(image)
    rows = max(1, _BAND_PIXELS // image.width)
    narrowed: Image.Image | None = None
    for top in range(0, image.height, rows):
        band = _normalised(image.crop((0, top, image.width, min(top + rows, image.height))))
        band = band.resize((target[0], band.height), Image.Resampling.LANCZOS)
        if narrowed is None:
            narrowed = Image.new(band.mode, (target[0], image.height))
        narrowed.paste(band, (0, top))
    assert narrowed is not None  # (an image has at least one row)
    return narrowed


def _normalised(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency; grey stays grey."""
    if image.mode in ("RGB", "L", "RGBA"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        return image.convert("RGBA")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit or float greys: scale to 8 bits (a plain convert would clip to white).
        return image.convert("F").point(lambda v: v / 256.0).convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, 1-bit …


def _encoded(image: Image.Image, *, prefer_jpeg: bool) -> Downscaled:
    has_alpha = image.mode == "RGBA" and _min_alpha(image) < 255
    if image.mode == "RGBA" and not has_alpha:
        image = image.convert("RGB")
    if not prefer_jpeg or has_alpha:
        png = _save(image, "PNG", compress_level=6)
        if len(png) <= (ALPHA_PNG_BUDGET if has_alpha else PNG_BUDGET):
            return Downscaled(png, "image/png", image.width, image.height)
    if has_alpha:
        # Flattened onto white, as a page shows it (vision models see no transparency anyway).
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    jpeg = _save(image, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return Downscaled(jpeg, "image/jpeg", image.width, image.height)


def _min_alpha(image: Image.Image) -> float:
    low, _ = image.getchannel("A").getextrema()
    return float(low) if isinstance(low, int | float) else 0.0


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()
