"""Image-to-video costs, each as a ratio to a baseline measured in the same run:

- fitting an upload (`sora2.api.videos.images.fit_reference`: checks, EXIF, flatten, cover-crop,
  JPEG) against Pillow merely decoding the same file;
- the local renderer's clip from an image (`render_clip` with `Scene.image`) against the same
  clip from words alone (the gradient).

CPU seconds of this process (`time.process_time`), the median of a few runs, so other processes
on the machine move the figures little. `python -m bench images`.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sora2.api.providers.render import Scene, render_clip
from sora2.api.videos.images import fit_reference


def _cpu_median(work: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        timings.append(time.process_time() - started)
    return statistics.median(timings)


def _photo(width: int, height: int) -> bytes:
    """A camera-like JPEG: noise compresses badly, as real detail does."""
    pixels = (np.random.default_rng(7).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def run(quick: bool) -> str:
    width, height = (2000, 1500) if quick else (4000, 3000)
    clip_size, seconds, repeats = ((640, 360), 2, 2) if quick else ((1280, 720), 4, 3)
    data = _photo(width, height)
    decode = _cpu_median(lambda: _decode(data), repeats)
    fit = _cpu_median(
        lambda: fit_reference(data, width=1280, height=720, max_bytes=len(data)), repeats
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        Image.new("RGB", clip_size, (30, 200, 60)).save(root / "reference.jpg")

        def clip(image: Path | None) -> Callable[[], None]:
            scene = Scene("a kite over the dunes", *clip_size, seconds, image=image)
            return lambda: render_clip(scene, root / "v.mp4", root / "t.jpg")

        gradient = _cpu_median(clip(None), repeats)
        picture = _cpu_median(clip(root / "reference.jpg"), repeats)
    megapixels = width * height / 1e6
    clip_name = f"{seconds} s at {clip_size[0]}x{clip_size[1]}"
    return "\n".join(
        [
            "## Image-to-video",
            "",
            "| work | CPU s | baseline | baseline CPU s | ratio |",
            "|---|---:|---|---:|---:|",
            f"| fit a {megapixels:.0f} MP JPEG ({len(data) / 1e6:.1f} MB) to 1280x720 | {fit:.3f} "
            f"| Pillow decoding it | {decode:.3f} | {fit / decode:.2f} |",
            f"| local clip from an image, {clip_name} | {picture:.2f} "
            f"| the same clip from words | {gradient:.2f} | {picture / gradient:.2f} |",
            "",
        ]
    )
