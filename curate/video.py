"""A video file as a player presents it: which stream, at what size and orientation, in what colours.

Real footage breaks the model "stream 0, coded size, BT.601 limited range":
- Stream choice follows FFmpeg's `av_find_best_stream`: a cover (attached picture), a thumbnail
  track (one frame, often an MJPEG track drones and cameras write first) or a still-image codec
  loses to a real video stream; the default disposition wins among the rest.
- Display geometry: the sample aspect ratio (SAR, non-square pixels of DVD and camcorder footage)
  scales the width, and the display matrix's rotation (phones) turns the picture upright. Every
  frame handed to a stage is upright with square pixels.
- Colour: the fast conversion at small sizes honours the frame's range (limited/tv or full/pc, as
  `yuvj420p` and many phones write) and matrix (BT.601, BT.709, BT.2020 by the stream's tags;
  untagged is BT.601, as swscale assumes); other pixel formats go through swscale with the same
  tags.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np


class VideoError(Exception):
    """A readable reason why a file cannot be used."""


# Codecs that hold single pictures: a stream of one of them with no frame count is a cover.
STILL_CODECS = frozenset({"png", "bmp", "tiff", "webp", "gif", "targa", "ppm", "pgm", "jpegls", "jpeg2000", "qoi"})
_COVER_DISPOSITIONS = av.stream.Disposition.attached_pic | av.stream.Disposition.still_image | av.stream.Disposition.timed_thumbnails


def is_cover(stream) -> bool:
    """A cover, thumbnail or still picture stored as a video stream."""
    if stream.disposition & _COVER_DISPOSITIONS:
        return True
    return stream.frames == 1 or (not stream.frames and stream.codec_context.name in STILL_CODECS)


def best_video_stream(container):
    """The movie stream, as `av_find_best_stream` (and so the ffmpeg CLI and players) picks it: never a
    cover or thumbnail when a real video stream exists; then the default disposition; then more
    frames (up to 5, as FFmpeg counts; unknown counts as many), more pixels, the lower index.

    Raises VideoError when the file has no video stream at all."""
    streams = list(container.streams.video)
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoError(f"no video stream (file holds {', '.join(kinds)})")

    def rank(s):
        default = bool(s.disposition & av.stream.Disposition.default)
        frames = min(s.frames, 5) if s.frames else 5
        return (not is_cover(s), default, frames, s.codec_context.width * s.codec_context.height, -s.index)

    return max(streams, key=rank)


def open_video(path):
    """(container, movie stream) of a file, or VideoError with the reason it cannot be opened.
    `path` may be a file-like object. The caller closes the container."""
    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a readable video file ({e.strerror or e})") from e
    except av.error.FFmpegError as e:
        raise VideoError(f"cannot open: {e}") from e
    try:
        return container, best_video_stream(container)
    except VideoError:
        container.close()
        raise


@dataclass(frozen=True)
class Geometry:
    """How decoded pictures are shown: coded size, sample aspect ratio and rotation.

    `rotation` is the display matrix's counter-clockwise turn in degrees (0, 90, 180 or 270) that
    makes the decoded picture upright; the ffmpeg CLI's autorotation applies the same turn."""

    coded_width: int
    coded_height: int
    sar: Fraction = Fraction(1)
    rotation: int = 0

    @property
    def _unrotated(self) -> tuple[float, float]:
        return self.coded_width * float(self.sar), float(self.coded_height)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) a player shows: width scaled by the SAR (kept even when scaled), then rotated."""
        w, h = self._unrotated
        w = self.coded_width if self.sar == 1 else max(2, round(w / 2) * 2)
        return (int(h), w) if self.rotation % 180 else (w, int(h))

    @property
    def aspect_ratio(self) -> float:
        """Display aspect ratio, width / height as shown (DAR, exact: 720x480 at SAR 32:27 is 16/9)."""
        w, h = self._unrotated
        return h / w if self.rotation % 180 else w / h

    def scaled(self, short_side: int) -> tuple[int, int]:
        """Upright, square-pixel size with the given short side (never upscaled), both sides even."""
        w, h = self._unrotated
        if self.rotation % 180:
            w, h = h, w
        s = min(1.0, short_side / min(w, h))
        return max(2, round(w * s / 2) * 2), max(2, round(h * s / 2) * 2)

    def coded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size to scale a decoded picture to so that, once rotated, it is `size`."""
        return (size[1], size[0]) if self.rotation % 180 else size


def geometry(stream, frame) -> Geometry:
    """Geometry of a stream from its (container or codec) SAR and the first frame's display matrix."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
    rotation = round(float(frame.rotation or 0) / 90) * 90 % 360
    return Geometry(frame.width, frame.height, sar, rotation)


def upright(a: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded picture (H x W [x C]) counter-clockwise by `rotation` degrees."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(a, k)) if k else a


# ---------------------------------------------------------------- colour

_FAST_FORMATS = {"yuv420p": False, "yuvj420p": True}  # 8-bit planar 4:2:0 -> full range by format
# (Kr, Kb) of the YCbCr matrices, by AVColorSpace: BT.709 (1), SMPTE 240M (7), BT.2020 (9, 10); the
# rest, unspecified (2) included, is BT.601 (5, 6), swscale's default.
_KR_KB = {1: (0.2126, 0.0722), 7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)


def full_range(frame) -> bool:
    """Whether a frame's samples use the full 0-255 range (JPEG/pc) rather than 16-235 (MPEG/tv)."""
    return _FAST_FORMATS.get(frame.format.name, False) or int(frame.color_range or 0) == 2


@functools.lru_cache(maxsize=32)
def yuv_to_rgb_matrix(colorspace: int, full: bool, bgr: bool = False) -> np.ndarray:
    """3 x 4 affine map from 8-bit (Y, Cb, Cr, 1) to 8-bit RGB (or BGR), ITU-R BT.601/709/2020."""
    kr, kb = _KR_KB.get(colorspace, _BT601)
    kg = 1.0 - kr - kb
    ys, cs, y0 = (1.0, 1.0, 0.0) if full else (255.0 / 219.0, 255.0 / 224.0, 16.0)
    m = np.array(
        [
            [ys, 0.0, 2 * (1 - kr) * cs],
            [ys, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs],
            [ys, 2 * (1 - kb) * cs, 0.0],
        ]
    )
    offset = -m @ np.array([y0, 128.0, 128.0])
    out = np.hstack([m, offset[:, None]])
    return (out[::-1] if bgr else out).astype(np.float32).copy()


def _plane(frame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]


def shrink(plane: np.ndarray, w: int, h: int) -> np.ndarray:
    """Downscale with little aliasing at a fraction of INTER_AREA's cost (slow on ratios that are not
    whole numbers, and on large ones): where more than 4x too large, one bilinear jump to 2x or 4x
    the target (a 2-4x jump up to 16x, larger beyond: each halving costs a pass), then halvings
    (bilinear at exactly 2x is a 2x2 average), then a last bilinear step (which also stretches
    non-square pixels to square)."""
    ratio = min(plane.shape[1] / w, plane.shape[0] / h)
    if ratio > 4:
        k = 2 if ratio <= 8 else 4
        plane = cv2.resize(plane, (k * w, k * h), interpolation=cv2.INTER_LINEAR)
    while plane.shape[1] >= 2 * w and plane.shape[0] >= 2 * h:
        plane = cv2.resize(plane, (plane.shape[1] // 2, plane.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    if plane.shape[:2] == (h, w):
        return plane
    return cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR)


def swscale(frame, fmt: str, w: int, h: int) -> np.ndarray:
    """swscale's conversion, told the frame's range (PyAV otherwise assumes limited range)."""
    src_range = "JPEG" if full_range(frame) else "MPEG"
    return frame.reformat(width=w, height=h, format=fmt, src_color_range=src_range, dst_color_range="JPEG").to_ndarray()


def to_rgb(frame, w: int, h: int, bgr: bool = False) -> np.ndarray:
    """The decoded picture scaled to w x h (coded orientation) as 8-bit RGB (or BGR).

    For 8-bit 4:2:0 the planes are scaled with OpenCV and converted at the small size (about free next
    to decoding; swscale's full conversion would halve the decode rate), with the frame's own range and
    matrix; other formats go through swscale."""
    if frame.format.name not in _FAST_FORMATS:
        rgb = swscale(frame, "rgb24", w, h)
        return rgb[..., ::-1].copy() if bgr else rgb
    y = shrink(_plane(frame, 0), w, h)
    u = shrink(_plane(frame, 1), max(1, w // 2), max(1, h // 2))
    v = shrink(_plane(frame, 2), max(1, w // 2), max(1, h // 2))
    colorspace, full = int(frame.colorspace or 2), full_range(frame)
    if not full and colorspace not in _KR_KB and w % 2 == 0 and h % 2 == 0:
        # BT.601 limited range, the common case: OpenCV's own I420 conversion is the same maths, faster.
        i420 = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420 if bgr else cv2.COLOR_YUV2RGB_I420)
    u = cv2.resize(u, (w, h), interpolation=cv2.INTER_LINEAR)
    v = cv2.resize(v, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.transform(cv2.merge([y, u, v]), yuv_to_rgb_matrix(colorspace, full, bgr))


def _range_lut(full: bool) -> np.ndarray | None:
    if full:
        return None
    return np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


_LIMITED_TO_FULL = _range_lut(False)


def to_luma(frame, w: int, h: int) -> np.ndarray:
    """The luma plane scaled to w x h (coded orientation), expanded to full range (0-255)."""
    if frame.format.name not in _FAST_FORMATS:
        return swscale(frame, "gray", w, h)
    y = shrink(_plane(frame, 0), w, h)
    return y if full_range(frame) else cv2.LUT(y, _LIMITED_TO_FULL)
