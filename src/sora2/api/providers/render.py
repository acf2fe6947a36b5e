"""Pure rendering for the `local` provider: a prompt becomes an animated H.264 MP4 and a JPEG.

The scene is a horizontally scrolling gradient with soft drifting lights, the prompt's words
revealed one by one over the first part of the clip, and a thin timeline bar. Everything costly is
drawn once (the gradient strip, the light sprites, the text layer); each frame is a slice of the
strip plus a few small blends on numpy arrays, so x264 does most of the work.

No job bookkeeping lives here: `render_clip` writes the two files it is given and reports progress.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FPS = 24
# veryfast costs about as much as ultrafast on clips this simple and keeps CABAC, so files are
# a third smaller; crf 23 is x264's own default quality.
X264_PRESET = "veryfast"
X264_CRF = "23"
THUMBNAIL_MAX_SIDE = 640
THUMBNAIL_AT = 0.75  # of the clip: every word is on screen by then
REVEAL_UNTIL = 0.6  # of the clip: the last word appears here
MIN_FONT_PX = 12
FONT_CANDIDATES = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf")

Pixels = npt.NDArray[np.uint8]
Weights = npt.NDArray[np.uint16]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class RenderStopped(Exception):
    """`should_stop` said so: the clip was abandoned between two frames."""


@dataclass(frozen=True, slots=True)
class Scene:
    prompt: str
    width: int
    height: int
    seconds: int
    fps: int = FPS

    @property
    def frame_count(self) -> int:
        return self.seconds * self.fps


def render_clip(
    scene: Scene,
    video: Path,
    thumbnail: Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Encode `scene` to `video` (MP4) and save a thumbnail to `thumbnail` (JPEG).

    `on_progress(done, total)` is called after each encoded frame; `should_stop()` is asked before
    each frame and ends the render with `RenderStopped`. The paths are written in place: the caller
    picks temporary names and renames them when this returns.
    """
    painter = FramePainter(scene)
    thumbnail_index = min(scene.frame_count - 1, int(scene.frame_count * THUMBNAIL_AT))
    with av.open(str(video), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(
            "libx264",
            rate=scene.fps,
            options={"preset": X264_PRESET, "crf": X264_CRF},
        )
        stream.width = scene.width
        stream.height = scene.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, scene.fps)
        # A keyframe every two seconds lets a browser seek without decoding from the start.
        stream.codec_context.gop_size = 2 * scene.fps
        for index in range(scene.frame_count):
            if should_stop is not None and should_stop():
                raise RenderStopped
            pixels = painter.paint(index)
            if index == thumbnail_index:
                save_thumbnail(pixels, thumbnail)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
            if on_progress is not None:
                on_progress(index + 1, scene.frame_count)
        container.mux(stream.encode(None))


def save_thumbnail(pixels: Pixels, path: Path) -> None:
    image = Image.fromarray(pixels, "RGB")
    image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    image.save(path, format="JPEG", quality=85, optimize=True)


@dataclass(frozen=True, slots=True)
class Palette:
    stops: tuple[tuple[int, int, int], ...]  # the gradient, cycling back to the first
    light: tuple[int, int, int]


def palette_for(prompt: str) -> Palette:
    """Colours derived from the prompt, so the same prompt always looks the same."""
    digest = hashlib.sha256(prompt.encode()).digest()
    base_hue = digest[0] / 255
    stops = tuple(
        _hsv_to_rgb((base_hue + offset) % 1.0, 0.55 + digest[i + 1] / 255 * 0.3, 0.45)
        for i, offset in enumerate((0.0, 0.12, 0.28))
    )
    return Palette(stops=stops, light=_hsv_to_rgb((base_hue + 0.5) % 1.0, 0.25, 1.0))


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    sector = int(hue * 6) % 6
    fraction = hue * 6 - int(hue * 6)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    red, green, blue = rgb[sector]
    return round(red * 255), round(green * 255), round(blue * 255)


class FramePainter:
    """Draws frame `index` of a scene from layers prepared once."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        palette = palette_for(scene.prompt)
        self.strip = gradient_strip(scene.width, scene.height, palette)
        self.lights = drifting_lights(scene, palette)
        self.text = TextLayer(scene)
        self.bar_colour = np.array(palette.light, dtype=np.uint8)

    def paint(self, index: int) -> Pixels:
        scene = self.scene
        progress = index / scene.frame_count
        # The strip is one period wide beyond the frame, so one period scrolls by per clip.
        offset = int(progress * scene.width)
        frame = self.strip[:, offset : offset + scene.width].copy()
        time = index / scene.fps
        for light in self.lights:
            light.blend_onto(frame, time)
        self.text.blend_onto(frame, min(1.0, progress / REVEAL_UNTIL), time)
        self._timeline(frame, (index + 1) / scene.frame_count)
        return frame

    def _timeline(self, frame: Pixels, fraction: float) -> None:
        thickness = max(2, self.scene.height // 120)
        frame[-thickness:, : int(self.scene.width * fraction)] = self.bar_colour


def gradient_strip(width: int, height: int, palette: Palette) -> Pixels:
    """A horizontal gradient two frames wide whose second half repeats the first (seamless)."""
    stops = np.array([*palette.stops, palette.stops[0]], dtype=np.float32)
    positions = np.linspace(0.0, 1.0, len(stops))
    x = (np.arange(width, dtype=np.float32) / width) % 1.0
    row = np.stack([np.interp(x, positions, stops[:, channel]) for channel in range(3)], axis=1)
    row = np.concatenate([row, row], axis=0)
    # A vertical shade: lighter at the top, darker at the bottom, like sky over ground.
    shade = np.linspace(1.2, 0.7, height, dtype=np.float32)[:, None, None]
    strip: Pixels = np.clip(row[None, :, :] * shade, 0, 255).astype(np.uint8)
    return strip


class DriftingLight:
    """A soft disc that drifts on a Lissajous path, blended towards a tint."""

    def __init__(
        self,
        *,
        radius: int,
        centre: tuple[float, float],
        swing: tuple[float, float],
        speed: tuple[float, float],
        phase: float,
        tint: tuple[int, int, int],
        strength: float,
    ) -> None:
        self.radius = radius
        self.centre = centre
        self.swing = swing
        self.speed = speed
        self.phase = phase
        self.tint = np.array(tint, dtype=np.int32)
        grid = np.arange(-radius, radius, dtype=np.float32) / radius
        distance = np.sqrt(grid[None, :] ** 2 + grid[:, None] ** 2)
        falloff = np.clip(1.0 - distance, 0.0, 1.0) ** 2
        self.weights = (falloff * strength * 256).astype(np.int32)[:, :, None]

    def blend_onto(self, frame: Pixels, time: float) -> None:
        height, width = frame.shape[:2]
        x = self.centre[0] + self.swing[0] * math.sin(self.speed[0] * time + self.phase)
        y = self.centre[1] + self.swing[1] * math.cos(self.speed[1] * time + self.phase)
        left, top = round(x) - self.radius, round(y) - self.radius
        size = 2 * self.radius
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + size, width), min(top + size, height)
        if x0 >= x1 or y0 >= y1:
            return
        weights = self.weights[y0 - top : y1 - top, x0 - left : x1 - left]
        region = frame[y0:y1, x0:x1].astype(np.int32)
        region += ((self.tint - region) * weights) >> 8
        frame[y0:y1, x0:x1] = region


def drifting_lights(scene: Scene, palette: Palette, count: int = 5) -> list[DriftingLight]:
    digest = hashlib.sha256(("lights:" + scene.prompt).encode()).digest()
    short = min(scene.width, scene.height)
    lights = []
    for i in range(count):
        a, b, c, d = digest[4 * i : 4 * i + 4]
        lights.append(
            DriftingLight(
                radius=max(4, int(short * (0.12 + a / 255 * 0.18))),
                centre=(scene.width * (0.15 + 0.7 * b / 255), scene.height * (0.2 + 0.6 * c / 255)),
                swing=(scene.width * 0.2, scene.height * 0.15),
                speed=(0.6 + d / 255, 0.4 + a / 255 * 0.8),
                phase=2 * math.pi * d / 255,
                tint=palette.light,
                strength=0.25 + 0.2 * b / 255,
            )
        )
    return lights


@dataclass(frozen=True, slots=True)
class PlacedWord:
    line: int
    right: int  # x where the word ends, in text-layer pixels


class TextLayer:
    """The prompt, wrapped and centred, pre-drawn once as "keep" and "add" weights.

    Compositing is `frame * keep / 256 + add` over the text's bounding box only: white letters on
    a soft dark shadow, with no per-frame drawing. Words appear in reading order.
    """

    def __init__(self, scene: Scene) -> None:
        box_width, box_height = int(scene.width * 0.8), int(scene.height * 0.6)
        font, lines = fit_text(scene.prompt, box_width, box_height)
        line_height = _line_height(font)
        margin = max(2, line_height // 6)
        layer_width = max((_text_width(font, line) for line in lines), default=1) + 2 * margin
        layer_height = line_height * len(lines) + 2 * margin
        fill = Image.new("L", (layer_width, layer_height), 0)
        draw = ImageDraw.Draw(fill)
        self.words: list[PlacedWord] = []
        self.line_tops: list[int] = []
        for number, line in enumerate(lines):
            left = margin + (layer_width - 2 * margin - _text_width(font, line)) // 2
            top = margin + number * line_height
            draw.text((left, top), line, fill=255, font=font)
            self.line_tops.append(top)
            for right in _word_ends(font, line):
                self.words.append(PlacedWord(line=number, right=left + right))
        self.line_height = line_height
        shadow = fill.filter(ImageFilter.GaussianBlur(max(1, line_height // 10)))
        fill_alpha = np.asarray(fill, dtype=np.float32) / 255
        shadow_alpha = np.asarray(shadow, dtype=np.float32) / 255 * 0.6
        # "Over" of white fill on a black shadow, reduced to a multiply and an add.
        alpha = fill_alpha + shadow_alpha * (1 - fill_alpha)
        self.keep: Weights = np.round((1 - alpha) * 256).astype(np.uint16)
        self.add: Weights = np.round(fill_alpha * 255).astype(np.uint16)
        self.left = (scene.width - layer_width) // 2
        self.top = (scene.height - layer_height) // 2
        self.drift = max(1, scene.height // 80)
        self._revealed = -1
        self._visible_keep = self.keep
        self._visible_add = self.add

    def blend_onto(self, frame: Pixels, reveal: float, time: float) -> None:
        self._reveal(math.ceil(reveal * len(self.words)))
        height, width = self._visible_keep.shape
        top = self.top + round(self.drift * math.sin(time * 1.5))
        x0, y0 = max(self.left, 0), max(top, 0)
        x1, y1 = min(self.left + width, frame.shape[1]), min(top + height, frame.shape[0])
        keep = self._visible_keep[y0 - top : y1 - top, x0 - self.left : x1 - self.left, None]
        add = self._visible_add[y0 - top : y1 - top, x0 - self.left : x1 - self.left, None]
        region = frame[y0:y1, x0:x1].astype(np.uint16)
        frame[y0:y1, x0:x1] = ((region * keep) >> 8) + add

    def _reveal(self, count: int) -> None:
        """Hide every word after the first `count` (recomputed only when `count` changes)."""
        if count == self._revealed:
            return
        self._revealed = count
        if count >= len(self.words):
            self._visible_keep, self._visible_add = self.keep, self.add
            return
        keep, add = self.keep.copy(), self.add.copy()
        hidden_from_line, hidden_from_x = 0, 0
        if count > 0:
            last = self.words[count - 1]
            hidden_from_line, hidden_from_x = last.line, last.right
        band_top = self.line_tops[hidden_from_line]
        band_bottom = band_top + self.line_height
        keep[band_top:band_bottom, hidden_from_x:] = 256
        add[band_top:band_bottom, hidden_from_x:] = 0
        keep[band_bottom:] = 256
        add[band_bottom:] = 0
        self._visible_keep, self._visible_add = keep, add


def fit_text(prompt: str, box_width: int, box_height: int) -> tuple[Font, list[str]]:
    """The largest font whose wrapped prompt fits the box; at the smallest size, cut with '…'."""
    words = prompt.split() or [" "]
    size = max(MIN_FONT_PX, box_height // 4)
    while True:
        font = load_font(size)
        lines = wrap_words(words, font, box_width)
        fits = len(lines) * _line_height(font) <= box_height
        if fits or size <= MIN_FONT_PX:
            break
        size = max(MIN_FONT_PX, int(size * 0.85))
    max_lines = max(1, box_height // _line_height(font))
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _ellipsize(lines[-1], font, box_width)
    return font, lines


def wrap_words(words: list[str], font: Font, width: int) -> list[str]:
    """Greedy word wrap by rendered width; a word wider than a line is split by characters."""
    lines: list[str] = []
    current = ""
    for word in words:
        for piece in _split_wide_word(word, font, width):
            candidate = f"{current} {piece}" if current else piece
            if current and _text_width(font, candidate) > width:
                lines.append(current)
                current = piece
            else:
                current = candidate
    if current:
        lines.append(current)
    return lines


def _split_wide_word(word: str, font: Font, width: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and _text_width(font, current + char) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    pieces.append(current)
    return pieces


def _ellipsize(line: str, font: Font, width: int) -> str:
    while line and _text_width(font, line + "…") > width:
        line = line[:-1]
    return line.rstrip() + "…"


def _word_ends(font: Font, line: str) -> list[int]:
    """x offsets where each word of `line` ends."""
    ends = []
    position = 0
    for word in line.split(" "):
        position += len(word)
        ends.append(round(_text_width(font, line[:position])))
        position += 1
    return ends


def load_font(size: int) -> Font:
    """A bold system font when there is one (wide Unicode coverage), else Pillow's own."""
    for name in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _text_width(font: Font, text: str) -> int:
    return math.ceil(font.getlength(text))


def _line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ág")
    return math.ceil((bottom - top) * 1.3)
