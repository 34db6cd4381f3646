"""Images made the size vision models use: at most ``max_side`` pixels on the long side and
``max_pixels`` in all (what Claude and GPT-4o-class models work at anyway; more only costs
tokens and upload time), upright (EXIF orientation applied), metadata dropped (no GPS position
reaches the model), the first frame of an animation, as JPEG or PNG.

    shrunk = downscale(phone_photo, max_side=1568, max_pixels=1_150_000)
    shrunk.mime, shrunk.width, shrunk.height, len(shrunk.data)   # 'image/jpeg', 1238, 928, …

A JPEG is decoded at a reduced scale where that still covers the target (cheap in time and
memory even for 100+ MP photos); other formats over ``max_source_pixels`` are refused, as is
anything Pillow considers a decompression bomb.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.files.attachment import Unreadable

MAX_SIDE = 1568
MAX_PIXELS = 1_150_000
MAX_SOURCE_PIXELS = 40_000_000  # decoded at full size (not a JPEG): 160 MB as RGBA
JPEG_QUALITY = 85
# A PNG bigger than this is probably a photo: JPEG says the same in a fraction of the bytes.
PNG_BUDGET = 1_000_000
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            target = _fit(width, height, max_side, max_pixels)
            if opened.format == "JPEG":
                opened.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale when that covers it
            elif width * height > max_source_pixels:
                raise Unreadable(f"{name} has too many pixels for me to open.")
            jpeg_source = opened.format == "JPEG"
            opened.seek(0)  # an animation: its first frame
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Image.DecompressionBombError:
        raise Unreadable(f"{name} has too many pixels for me to open.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise Unreadable(f"{name} looks like an image, but I couldn't decode it.") from None
    image = _normalised(image)
    size = _fit(image.width, image.height, max_side, max_pixels)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _encoded(image, prefer_jpeg=jpeg_source)


def _fit(width: int, height: int, max_side: int, max_pixels: int) -> tuple[int, int]:
    """The largest size with the same aspect ratio within both limits (never larger)."""
    scale = min(
        1.0, max_side / max(width, height, 1), math.sqrt(max_pixels / max(width * height, 1))
    )
    if scale >= 1.0:
        return width, height
    # (the epsilon: 3000 × 1568/3000 is 1567.9999… in floating point)
    return max(1, math.floor(width * scale + 1e-6)), max(1, math.floor(height * scale + 1e-6))


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
        if has_alpha or len(png) <= PNG_BUDGET:
            return Downscaled(png, "image/png", image.width, image.height)
    jpeg = _save(image, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return Downscaled(jpeg, "image/jpeg", image.width, image.height)


def _min_alpha(image: Image.Image) -> float:
    low, _ = image.getchannel("A").getextrema()
    return float(low) if isinstance(low, int | float) else 0.0


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()
