"""Image decoding that converts what users really have (16-bit, CMYK, palette, grey) to 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from visionpipe.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    peak = data.max(initial=0)
    if array.dtype.kind == "f" and peak <= 1.0:
        scale = 1.0  # float image in [0, 1]
    elif peak > 255:
        scale = 65535.0  # genuine 16-bit range
    else:
        scale = 255.0  # 8-bit values stored in a wider type
    return np.clip(data / scale * 255.0, 0, 255).round().astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Return an HxWx3 uint8 array from a PIL image of any common mode, honouring EXIF rotation."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def load_rgb(path: str | Path, max_pixels: int | None = None, data: bytes | None = None) -> np.ndarray:
    """Decode an image file as HxWx3 uint8; a bad file raises DataError naming it.

    ``data``: the file's bytes when they do not come from ``path`` itself (a member of a tar shard);
    ``path`` then only names the image in errors.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as image:
                if max_pixels and image.width * image.height > max_pixels:
                    raise DataError(
                        path,
                        f"image is {image.width}x{image.height} pixels, over the limit of {max_pixels}",
                        "Resize it, or raise data.max_image_pixels if it is genuine",
                    )
                image.load()
                return to_rgb(image)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "file not found", "Check data.root and the annotation's file name") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(path, f"decompression bomb refused ({err})", "Check the file; it is far larger than an image should be") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(path, f"cannot decode image ({err})", "Re-export the file or remove it") from None


def load_mask(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Decode a class-index mask as HxW uint8/int64 without any colour conversion (``data`` as in load_rgb)."""
    path = Path(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as mask:
            mask.load()
            if mask.mode in ("RGB", "RGBA"):
                raise DataError(
                    path,
                    f"mask is {mask.mode}, expected a single-channel class-index image",
                    "Save masks as 8-bit (L or P mode) PNGs whose pixel value is the class index",
                )
            array = np.asarray(mask)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "mask file not found", "Every image needs a mask with the same file stem") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(path, f"cannot decode mask ({err})", "Re-export the mask as PNG") from None
    if array.ndim != 2:
        raise DataError(path, f"mask has shape {array.shape}, expected HxW", "Save masks as single-channel PNGs")
    return array.astype(np.int64)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header without decoding pixels."""
    try:
        with Image.open(path) as image:
            return image.width, image.height
    except FileNotFoundError:
        raise DataError(path, "file not found", "Check data.root and the label file's image name") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(path, f"cannot read image header ({err})", "Re-export the file or remove it") from None
