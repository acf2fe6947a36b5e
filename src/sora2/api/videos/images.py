"""The image a video starts from: checked, decoded safely and fitted to the video's size.

An upload is untrusted bytes. Before anything is charged or stored it must be a JPEG, PNG or
WebP within `INPUT_REFERENCE_MAX_BYTES`, whose header declares at most `MAX_PIXELS` pixels (read
before decoding, so a decompression bomb is refused without being expanded). Decoded, its EXIF
orientation is applied (phones store portraits sideways), transparency is laid on white and
CMYK or palette images become RGB, and it is cover-cropped around its centre to exactly the
video's size: what the provider gets is what the first frame should look like.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from sora2.api.errors import ApiError
from sora2.api.storage import Storage

FIELD = "input_reference"
FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# 40 megapixels: any camera's photo, far below what would exhaust memory when decoded (a 40 MP
# RGB image is 120 MB; Pillow's own bomb limit is about 89 MP).
MAX_PIXELS = 40_000_000
JPEG_QUALITY = 92
CONTENT_TYPE = "image/jpeg"


def reference_key(user_id: str, video_id: str) -> str:
    return f"references/{user_id}/{video_id}.jpg"


async def store_reference(storage: Storage, key: str, data: bytes) -> None:
    """Writes the fitted image where the video's files live (the one place that knows how)."""
    await storage.put_bytes(key, data)


async def read_reference(storage: Storage, key: str) -> bytes:
    """The stored image, for the worker to send upstream."""
    return await storage.read_bytes(key)


@dataclass(frozen=True, slots=True)
class FittedImage:
    """The reference as stored and sent upstream: a JPEG of exactly the video's size."""

    data: bytes
    width: int
    height: int
    source_format: str

    content_type = CONTENT_TYPE


def _refuse(status: int, title: str, message: str, **details: object) -> ApiError:
    return ApiError(status, title, message, details={"field": FIELD, **details})


def check_size(length: int, max_bytes: int) -> None:
    if length > max_bytes:
        raise _refuse(
            413,
            "Payload Too Large",
            f"The image is {length / 1048576:.1f} MiB; the limit is {max_bytes / 1048576:.0f} MiB. "
            "Send a smaller JPEG, PNG or WebP.",
            maxBytes=max_bytes,
        )
    if length == 0:
        raise _refuse(
            422, "Validation Error", "The image file is empty: choose a JPEG, PNG or WebP."
        )


def fit_reference(data: bytes, *, width: int, height: int, max_bytes: int) -> FittedImage:
    """The upload fitted to `width`x`height`, or a 4xx `ApiError` naming what is wrong with it."""
    check_size(len(data), max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                _check_pixels(image.width, image.height)
                source_format = str(image.format)
                image.load()
                fitted = _fit(_upright_rgb(image), width, height)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, met at open for headers past ~89 megapixels.
        raise _too_many_pixels(0, 0) from None
    except UnidentifiedImageError:
        raise _not_an_image() from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt image data
        raise _refuse(
            422,
            "Validation Error",
            f"The image could not be decoded ({type(error).__name__}): it is damaged or "
            "truncated. Send the file again, or another JPEG, PNG or WebP.",
        ) from None
    buffer = io.BytesIO()
    fitted.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return FittedImage(buffer.getvalue(), width, height, source_format)


def _not_an_image() -> ApiError:
    return _refuse(
        415,
        "Unsupported Media Type",
        "input_reference is not a JPEG, PNG or WebP image: send one of those.",
        accepted=list(FORMATS.values()),
    )


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise _too_many_pixels(width, height)


def _too_many_pixels(width: int, height: int) -> ApiError:
    what = f"{width}x{height} pixels" if width else "far too many pixels"
    return _refuse(
        422,
        "Validation Error",
        f"The image has {what}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels. "
        "Send a smaller image.",
        maxPixels=MAX_PIXELS,
    )


def _upright_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; alpha laid on white; CMYK, palette and grey made RGB."""
    upright = ImageOps.exif_transpose(image)
    if upright.mode == "P":
        upright = upright.convert("RGBA")
    if upright.mode in ("RGBA", "LA", "PA") or "A" in upright.getbands():
        background = Image.new("RGB", upright.size, (255, 255, 255))
        background.paste(upright.convert("RGBA"), mask=upright.convert("RGBA").getchannel("A"))
        return background
    return upright.convert("RGB")


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width`x`height`, then crop the overflow equally from both sides."""
    return ImageOps.fit(
        image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
    )
