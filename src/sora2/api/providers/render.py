"""Pure rendering for the `local` provider: a prompt becomes an animated H.264 MP4 and a JPEG.

The scene is a horizontally scrolling gradient with soft drifting lights (or, from an image, that
image slowly panning and zooming), the prompt's words
revealed one by one over the first part of the clip, a small caption and a thin timeline bar.
Everything costly is drawn once (the gradient strip, the light sprites, the text layers); each
frame is a slice of the strip plus a few small integer blends on numpy arrays, painted directly in
the encoder's YUV 4:2:0, so x264 does most of the work.

No job bookkeeping lives here: `render_clip` writes the two files it is given and reports progress.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

FPS = 24
# Measured on a 4 s 720p clip: superfast costs 40 % less CPU than veryfast for files twice as big
# (still under 1 MB), and unlike ultrafast keeps CABAC and the deblocking filter, which smooths the
# gradients. crf 23 is x264's own default quality.
X264_PRESET = "superfast"
X264_CRF = "23"
THUMBNAIL_MAX_SIDE = 640
THUMBNAIL_AT = 0.75  # of the clip: every word is on screen by then
REVEAL_UNTIL = 0.6  # of the clip: the last word appears here
MIN_FONT_PX = 12
FONT_CANDIDATES = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf")

SHADE_TOP, SHADE_BOTTOM = 1.2, 0.7  # x palette value 0.45 stays under 1: no clipping
MAX_LIGHT_STRENGTH = 0.49  # keeps light weights under 128/256: see DriftingLight
# ffmpeg's enum values for BT.709 (colour space, primaries, transfer) and limited ("MPEG") range.
AVCOL_BT709 = 1
AVCOL_RANGE_MPEG = 1
KR, KB = 0.2126, 0.0722
KG = 1 - KR - KB

Pixels = npt.NDArray[np.uint8]
Weights = npt.NDArray[np.uint16]
Shorts = npt.NDArray[np.int16]
Floats = npt.NDArray[np.floating[Any]]
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
    caption: str = ""  # small print in the top-left corner, e.g. which model it stands in for
    image: Path | None = None  # image-to-video: the clip opens on it, slowly panning and zooming
    palette_prompt: str | None = None  # a remix keeps its source's colours (from its prompt)

    @property
    def look(self) -> str:
        """What the colours and the lights are drawn from."""
        return self.palette_prompt or self.prompt

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
        _tag_bt709(stream.codec_context)
        for index in range(scene.frame_count):
            if should_stop is not None and should_stop():
                raise RenderStopped
            planes = painter.paint(index)
            if index == thumbnail_index:
                # Half size is enough whenever it is still at least the thumbnail's size.
                halved = max(scene.width, scene.height) // 2 >= THUMBNAIL_MAX_SIDE
                save_thumbnail(planes.to_rgb(halved=halved), thumbnail)
            frame = av.VideoFrame.from_ndarray(planes.as_i420(), format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
            if on_progress is not None:
                on_progress(index + 1, scene.frame_count)
        container.mux(stream.encode(None))


def _tag_bt709(codec: Any) -> None:
    """Say which colours the numbers mean (HD's BT.709, limited range), so no player guesses."""
    codec.colorspace = codec.color_primaries = codec.color_trc = AVCOL_BT709
    codec.color_range = AVCOL_RANGE_MPEG


def save_thumbnail(pixels: Pixels, path: Path) -> None:
    image = Image.fromarray(pixels, "RGB")
    image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS)
    image.save(path, format="JPEG", quality=85, optimize=True)


def rgb_to_yuv(rgb: Floats) -> tuple[Floats, Floats, Floats]:
    """BT.709 limited range (Y 16-235, U and V 16-240) from RGB 0-255, as floats."""
    red, green, blue = (rgb[..., channel] / 255 for channel in range(3))
    luma = KR * red + KG * green + KB * blue
    y = 16 + 219 * luma
    u = 128 + 224 * (blue - luma) / (2 * (1 - KB))
    v = 128 + 224 * (red - luma) / (2 * (1 - KR))
    return y, u, v


def yuv_to_rgb(y: Floats, u: Floats, v: Floats) -> Pixels:
    luma = (y - 16) / 219
    pb, pr = (u - 128) / 224, (v - 128) / 224
    red = luma + 2 * (1 - KR) * pr
    blue = luma + 2 * (1 - KB) * pb
    green = (luma - KR * red - KB * blue) / KG
    rgb = np.stack([red, green, blue], axis=-1) * 255
    pixels: Pixels = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return pixels


def colour_to_yuv(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    y, u, v = rgb_to_yuv(np.array(colour, dtype=np.float32))
    return round(float(y)), round(float(u)), round(float(v))


def half(plane: Floats) -> Floats:
    """Average 2x2 blocks: a chroma plane from a full-resolution one."""
    height, width = plane.shape[0] // 2, plane.shape[1] // 2
    halved: Floats = plane[: 2 * height, : 2 * width].reshape(height, 2, width, 2).mean(axis=(1, 3))
    return halved


class Planes:
    """One I420 frame in one reusable buffer: a full-size Y plane, then quarter-size U and V."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        area = width * height
        self.buffer: Pixels = np.empty(area * 3 // 2, dtype=np.uint8)
        self.y = self.buffer[:area].reshape(height, width)
        self.u = self.buffer[area : area * 5 // 4].reshape(height // 2, width // 2)
        self.v = self.buffer[area * 5 // 4 :].reshape(height // 2, width // 2)

    def as_i420(self) -> Pixels:
        return self.buffer.reshape(self.height * 3 // 2, self.width)

    def to_rgb(self, *, halved: bool = False) -> Pixels:
        """The frame as RGB, at full size or (cheaper, for a thumbnail) at half size."""
        if halved:
            chroma_u, chroma_v = self.u.astype(np.float32), self.v.astype(np.float32)
            return yuv_to_rgb(half(self.y.astype(np.float32)), chroma_u, chroma_v)

        def full(plane: Pixels) -> Floats:
            return np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1).astype(np.float32)

        return yuv_to_rgb(self.y.astype(np.float32), full(self.u), full(self.v))


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
    """Paints frame `index` of a scene, straight in YUV, from layers prepared once.

    Painting in the encoder's own format skips a colour conversion per frame and touches half the
    bytes RGB would: chroma is a quarter of the pixels. Everything is placed at even coordinates
    so that luma and chroma stay aligned.
    """

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        palette = palette_for(scene.look)
        self.strip = GradientStrip(scene.width, scene.height, palette)
        self.picture = PanAndZoom(scene) if scene.image is not None else None
        # Over a picture the lights would only muddy it: the words and the motion carry the clip.
        self.lights = drifting_lights(scene, palette) if self.picture is None else []
        self.text = TextLayer(scene)
        self.caption = Caption(scene) if scene.caption.strip() else None
        self.bar_colour = colour_to_yuv(palette.light)
        self.planes = Planes(scene.width, scene.height)

    def paint(self, index: int) -> Planes:
        """The frame, in a buffer that the next call overwrites."""
        scene = self.scene
        progress = index / scene.frame_count
        if self.picture is not None:
            self.picture.paint(self.planes, progress)
        else:
            # The strip is one period wide beyond the frame, so one period scrolls by per clip.
            self.strip.copy_window(self.planes, _even(progress * scene.width))
        time = index / scene.fps
        for light in self.lights:
            light.blend_onto(self.planes, time)
        self.text.blend_onto(self.planes, min(1.0, progress / REVEAL_UNTIL), time)
        if self.caption is not None:
            self.caption.blend_onto(self.planes)
        self._timeline((index + 1) / scene.frame_count)
        return self.planes

    def _timeline(self, fraction: float) -> None:
        thickness = max(2, _even(self.scene.height / 120))
        length = _even(self.scene.width * fraction)
        bar_y, bar_u, bar_v = self.bar_colour
        self.planes.y[-thickness:, :length] = bar_y
        self.planes.u[-thickness // 2 :, : length // 2] = bar_u
        self.planes.v[-thickness // 2 :, : length // 2] = bar_v


def _even(value: float) -> int:
    return int(value) // 2 * 2


class GradientStrip:
    """A horizontal gradient two frames wide whose second half repeats the first (seamless)."""

    def __init__(self, width: int, height: int, palette: Palette) -> None:
        stops = np.array([*palette.stops, palette.stops[0]], dtype=np.float32)
        positions = np.linspace(0.0, 1.0, len(stops))
        x = (np.arange(2 * width, dtype=np.float32) / width) % 1.0
        row = np.stack([np.interp(x, positions, stops[:, channel]) for channel in range(3)], -1)
        y_row, u_row, v_row = rgb_to_yuv(row)
        # A vertical shade: lighter at the top, darker at the bottom, like sky over ground. Shading
        # RGB scales Y - 16 and U, V - 128 by the same factor (palette colours are dark enough that
        # nothing clips), so each plane is an outer product: no full-size float image is needed.
        shade = np.linspace(SHADE_TOP, SHADE_BOTTOM, height, dtype=np.float32)
        chroma_shade = shade.reshape(height // 2, 2).mean(axis=1)
        self.y = _to_pixels(16 + np.outer(shade, y_row - 16))
        self.u = _to_pixels(128 + np.outer(chroma_shade, _pairs(u_row) - 128))
        self.v = _to_pixels(128 + np.outer(chroma_shade, _pairs(v_row) - 128))
        self.width = width

    def copy_window(self, planes: Planes, offset: int) -> None:
        np.copyto(planes.y, self.y[:, offset : offset + self.width])
        chroma = offset // 2
        np.copyto(planes.u, self.u[:, chroma : chroma + self.width // 2])
        np.copyto(planes.v, self.v[:, chroma : chroma + self.width // 2])


class PanAndZoom:
    """The starting image, slowly zooming in while it drifts sideways (a Ken Burns move).

    The image is turned into the encoder's Y, U and V planes once; each frame resamples a
    shrinking window of each plane to the frame's size (Pillow, on 8-bit planes: a few
    milliseconds at 720p), so no frame pays for a colour conversion. The api fitted the image to
    the video's size; it is fitted again here should it not be.
    """

    ZOOM = 1.15  # the last frame shows 1/1.15 of the width and height
    DRIFT = 0.5  # of the spare margin, from one side to the other

    def __init__(self, scene: Scene) -> None:
        assert scene.image is not None
        with Image.open(scene.image) as opened:
            image = opened.convert("RGB")
        if image.size != (scene.width, scene.height):
            image = ImageOps.fit(image, (scene.width, scene.height), Image.Resampling.LANCZOS)
        y, u, v = rgb_to_yuv(np.asarray(image, dtype=np.float32))
        self.y = Image.fromarray(_to_pixels(y), "L")
        self.u = Image.fromarray(_to_pixels(half(u)), "L")
        self.v = Image.fromarray(_to_pixels(half(v)), "L")
        self.width, self.height = scene.width, scene.height

    def window(self, progress: float) -> tuple[float, float, float, float]:
        """The part of the image frame `progress` (0 to 1) shows, as a box."""
        eased = progress * progress * (3 - 2 * progress)  # smoothstep: no jolt at either end
        zoom = 1 + (self.ZOOM - 1) * eased
        box_width, box_height = self.width / zoom, self.height / zoom
        spare_x, spare_y = self.width - box_width, self.height - box_height
        left = spare_x * (0.5 + self.DRIFT * (eased - 0.5))
        top = spare_y / 2
        return left, top, left + box_width, top + box_height

    def paint(self, planes: Planes, progress: float) -> None:
        box = self.window(progress)
        chroma_box = (box[0] / 2, box[1] / 2, box[2] / 2, box[3] / 2)
        for plane, source, size, window in (
            (planes.y, self.y, (self.width, self.height), box),
            (planes.u, self.u, (self.width // 2, self.height // 2), chroma_box),
            (planes.v, self.v, (self.width // 2, self.height // 2), chroma_box),
        ):
            resized = source.resize(size, Image.Resampling.BILINEAR, box=window)
            np.copyto(plane, np.asarray(resized))


def _pairs(row: Floats) -> Floats:
    """Average neighbours two by two: a chroma row from a full-resolution one."""
    paired: Floats = row.reshape(-1, 2).mean(axis=1)
    return paired


def _to_pixels(plane: Floats) -> Pixels:
    pixels: Pixels = np.clip(np.round(plane), 0, 255).astype(np.uint8)
    return pixels


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
        self.radius = _even(radius)
        self.centre = centre
        self.swing = swing
        self.speed = speed
        self.phase = phase
        self.tint = colour_to_yuv(tint)
        grid = (np.arange(-self.radius, self.radius, dtype=np.float32) + 0.5) / self.radius
        distance = np.sqrt(grid[None, :] ** 2 + grid[:, None] ** 2)
        falloff = np.clip(1.0 - distance, 0.0, 1.0) ** 2 * min(strength, MAX_LIGHT_STRENGTH)
        # Weights out of 256 stay under 128, so (tint - pixel) * weight fits in int16.
        self.weights = np.round(falloff * 256).astype(np.int16)
        self.chroma_weights = np.round(half(falloff) * 256).astype(np.int16)

    def blend_onto(self, planes: Planes, time: float) -> None:
        x = self.centre[0] + self.swing[0] * math.sin(self.speed[0] * time + self.phase)
        y = self.centre[1] + self.swing[1] * math.cos(self.speed[1] * time + self.phase)
        left, top = _even(x) - self.radius, _even(y) - self.radius
        ty, tu, tv = self.tint
        _blend_towards(planes.y, self.weights, left, top, ty)
        _blend_towards(planes.u, self.chroma_weights, left // 2, top // 2, tu)
        _blend_towards(planes.v, self.chroma_weights, left // 2, top // 2, tv)


def _blend_towards(plane: Pixels, weights: Shorts, left: int, top: int, target: int) -> None:
    """plane += (target - plane) * weights / 256, where the weights land on the plane."""
    height, width = plane.shape
    size_y, size_x = weights.shape
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size_x, width), min(top + size_y, height)
    if x0 >= x1 or y0 >= y1:
        return
    region = plane[y0:y1, x0:x1]
    change = np.subtract(target, region, dtype=np.int16)
    change *= weights[y0 - top : y1 - top, x0 - left : x1 - left]
    change >>= 8
    change += region
    np.copyto(region, change, casting="unsafe")


def drifting_lights(scene: Scene, palette: Palette, count: int = 5) -> list[DriftingLight]:
    digest = hashlib.sha256(("lights:" + scene.look).encode()).digest()
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


@dataclass(frozen=True, slots=True)
class TextWeights:
    """`plane * keep / 256 + add` per plane: the text composited over whatever is beneath."""

    keep: Weights
    add_y: Weights
    keep_chroma: Weights
    add_chroma: Weights

    def composite_onto(self, planes: Planes, left: int, top: int) -> None:
        """Blend over the frame with the layer's top-left corner at (left, top), both even."""
        _composite(planes.y, self.keep, self.add_y, left, top)
        for chroma in (planes.u, planes.v):
            _composite(chroma, self.keep_chroma, self.add_chroma, left // 2, top // 2)

    def hide_after(self, line_top: int, line_bottom: int, x: int) -> TextWeights:
        """A copy with everything from `x` on the band [line_top, line_bottom) onwards removed."""
        keep, add_y = self.keep.copy(), self.add_y.copy()
        keep_chroma, add_chroma = self.keep_chroma.copy(), self.add_chroma.copy()
        for keep_plane, add_plane, scale in ((keep, add_y, 1), (keep_chroma, add_chroma, 2)):
            top, bottom, left = line_top // scale, line_bottom // scale, x // scale
            keep_plane[top:bottom, left:] = 256
            add_plane[top:bottom, left:] = 0
            keep_plane[bottom:] = 256
            add_plane[bottom:] = 0
        return TextWeights(keep, add_y, keep_chroma, add_chroma)


class TextLayer:
    """The prompt, wrapped and centred, drawn once as white letters on a soft dark shadow.

    Compositing touches only the text's bounding box. Words appear in reading order.
    """

    def __init__(self, scene: Scene) -> None:
        box_width, box_height = int(scene.width * 0.8), int(scene.height * 0.6)
        font, lines = fit_text(scene.prompt, box_width, box_height)
        line_height = _line_height(font)
        margin = max(2, line_height // 6)
        text_width = max((_text_width(font, line) for line in lines), default=1)
        layer_width = _even(text_width + 2 * margin + 1)
        layer_height = _even(line_height * len(lines) + 2 * margin + 1)
        fill = Image.new("L", (layer_width, layer_height), 0)
        draw = ImageDraw.Draw(fill)
        self.words: list[PlacedWord] = []
        self.line_tops: list[int] = []
        for number, line in enumerate(lines):
            left = (layer_width - _text_width(font, line)) // 2
            top = margin + number * line_height
            draw.text((left, top), line, fill=255, font=font)
            self.line_tops.append(top)
            for right in _word_ends(font, line):
                self.words.append(PlacedWord(line=number, right=left + right))
        self.line_height = line_height
        shadow = fill.filter(ImageFilter.GaussianBlur(max(1, line_height // 10)))
        self.weights = text_weights(fill, shadow)
        self.left = _even((scene.width - layer_width) / 2)
        self.top = _even((scene.height - layer_height) / 2)
        self.drift = max(2, scene.height // 80)
        self._revealed = -1
        self._visible = self.weights

    def blend_onto(self, planes: Planes, reveal: float, time: float) -> None:
        self._reveal(math.ceil(reveal * len(self.words)))
        top = self.top + _even(self.drift * (1 + math.sin(time * 1.5))) - self.drift
        self._visible.composite_onto(planes, self.left, top)

    def _reveal(self, count: int) -> None:
        """Hide every word after the first `count` (recomputed only when `count` changes)."""
        if count == self._revealed:
            return
        self._revealed = count
        if count >= len(self.words):
            self._visible = self.weights
            return
        line, x = (self.words[count - 1].line, self.words[count - 1].right) if count else (0, 0)
        top = self.line_tops[line]
        self._visible = self.weights.hide_after(top, top + self.line_height, x)


class Caption:
    """One line of small print in the top-left corner, still for the whole clip."""

    def __init__(self, scene: Scene) -> None:
        font = load_font(max(MIN_FONT_PX, scene.height // 32))
        text = _ellipsize_to(scene.caption.strip(), font, scene.width // 2)
        line_height = _line_height(font)
        margin = max(2, line_height // 4)
        fill = Image.new(
            "L",
            (_even(_text_width(font, text) + 2 * margin + 1), _even(line_height + 2 * margin + 1)),
            0,
        )
        ImageDraw.Draw(fill).text((margin, margin), text, fill=230, font=font)
        shadow = fill.filter(ImageFilter.GaussianBlur(max(1, line_height // 8)))
        self.weights = text_weights(fill, shadow)
        self.left = self.top = _even(scene.height / 40)

    def blend_onto(self, planes: Planes) -> None:
        self.weights.composite_onto(planes, self.left, self.top)


def _ellipsize_to(text: str, font: Font, width: int) -> str:
    return text if _text_width(font, text) <= width else _ellipsize(text, font, width)


def text_weights(fill: Image.Image, shadow: Image.Image) -> TextWeights:
    """White fill "over" a 60 % black shadow "over" the frame, as a multiply and an add.

    In RGB that is `frame * (1 - alpha) + 255 * fill`; in limited-range YUV the same blend is
    `Y * (1 - alpha) + 16 * alpha + 219 * fill` and, since white and black carry no colour,
    `C * (1 - alpha) + 128 * alpha` for U and V.
    """
    fill_alpha = np.asarray(fill, dtype=np.float32) / 255
    shadow_alpha = np.asarray(shadow, dtype=np.float32) / 255 * 0.6
    alpha = fill_alpha + shadow_alpha * (1 - fill_alpha)
    chroma_alpha = half(alpha)
    return TextWeights(
        keep=np.round((1 - alpha) * 256).astype(np.uint16),
        add_y=np.round(16 * alpha + 219 * fill_alpha).astype(np.uint16),
        keep_chroma=np.round((1 - chroma_alpha) * 256).astype(np.uint16),
        add_chroma=np.round(128 * chroma_alpha).astype(np.uint16),
    )


def _composite(plane: Pixels, keep: Weights, add: Weights, left: int, top: int) -> None:
    height, width = plane.shape
    size_y, size_x = keep.shape
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size_x, width), min(top + size_y, height)
    if x0 >= x1 or y0 >= y1:
        return
    region = plane[y0:y1, x0:x1]
    mixed = np.multiply(region, keep[y0 - top : y1 - top, x0 - left : x1 - left], dtype=np.uint16)
    mixed >>= 8
    mixed += add[y0 - top : y1 - top, x0 - left : x1 - left]
    np.copyto(region, mixed, casting="unsafe")


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
