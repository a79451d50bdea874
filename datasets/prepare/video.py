"""Video files in and out with PyAV (FFmpeg is bundled in its wheels).

    for rgb in read_frames(path, fps=None, short_side=256): ...    # (H, W, 3) uint8 frames
    info = probe(path)                                              # frames, rate, size, rotation
    for t, rgb in read_timed_frames(path, fps, short_side): ...     # with their times (predict.py)
    times = frame_times(path, fps)                                  # the times alone, no conversion
    write_video(path, frames, fps, codec="libx264")                 # the generator and the tests
    with VideoWriter(path, fps) as w: w.write(rgb)                  # one frame at a time

Decoding follows what a player shows:
  * every frame the decoder returns is used once, in the decoder's output order, which is
    presentation order (B-frames come out reordered by their timestamps);
  * the rotation a phone records (display-matrix side data, e.g. -90 for a portrait iPhone
    video) is applied, so portrait videos come out portrait;
  * `fps`: the frames are resampled to that rate by taking, for each output time j / fps, the
    decoded frame nearest to it (ties: the earlier one): a lower rate drops frames, a higher
    one repeats them, and the last output time is at or before the last frame's; default:
    every frame. This is not FFmpeg's fps filter, which shows at j / fps the last frame whose
    time rounds to that slot (25 to 10 frames/s: frames 1, 3, 6, ... where this takes 0, 2, 5,
    ...) and fills slots up to the last frame's end;
  * `short_side`: frames larger than that are scaled down (OpenCV INTER_AREA) so that their
    short side is `short_side`; smaller ones are kept (enlarging adds nothing: the loaders
    resize anyway); 0 keeps the source size;
  * a file that cannot be opened, has no video stream or no frame, fails to decode, or
    yields fewer frames than its container lists (a truncated file) raises VideoError, whose
    message is one line naming the file.
"""
import fractions
import os
import re

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class VideoError(Exception):
    """A video that cannot be read; the message is one line naming the file."""


def natural_key(name):
    """Sort key that orders embedded numbers by value: frame2.png before frame10.png."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def _av():
    import av  # imported here so that importing this module costs nothing
    return av


def _reason(e):
    text = str(e).replace("\n", " ").strip() or type(e).__name__
    return text[:200]


def _open(path):
    av = _av()
    try:
        container = av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoError(f"cannot open video {path}: {_reason(e)} (not a video, or a damaged one; "
                         "re-encode or remove it)") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream (remove it from the videos folder)")
    return container


def probe(path):
    """{"frames": the container's frame count (0 when it does not say, e.g. mkv / webm),
    "rate": average frame rate (Fraction or None), "width", "height" (as stored, before any
    rotation)}."""
    with _open(path) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        return {"frames": int(s.frames or 0), "rate": fractions.Fraction(rate) if rate else None,
                "width": s.codec_context.width, "height": s.codec_context.height}


def estimated_frames(path, fps=None):
    """Frames `read_frames(path, fps)` will yield, from the container's header (for progress
    bars; 0 when unknown)."""
    with _open(path) as c:
        s = c.streams.video[0]
        n = int(s.frames or 0)
        rate = s.average_rate or s.guessed_rate
        if n == 0 and rate and c.duration:
            n = int(round(c.duration / 1e6 * float(rate)))
        if fps and rate:
            n = int(round(n * fps / float(rate)))
        return n


def _rotate(rgb, degrees):
    """Apply the display rotation: `degrees` counter-clockwise (FFmpeg's convention)."""
    k = int(round(degrees / 90.0)) % 4 if degrees else 0
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _resize(rgb, short_side):
    h, w = rgb.shape[:2]
    if not short_side or min(h, w) <= short_side:
        return rgb
    import cv2
    scale = short_side / min(h, w)
    size = (short_side, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), short_side)
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def output_size(width, height, short_side):
    """(width, height) of the frames read_frames yields for a source of that (rotated) size."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    if height <= width:
        return max(1, round(width * scale)), short_side
    return short_side, max(1, round(height * scale))


def _decoded(path, convert=True):
    """(time in seconds as a Fraction, rotated RGB frame) for every decoded frame, in
    presentation order (None instead of the frame with convert=False: times only)."""
    av = _av()
    c = _open(path)
    try:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        listed = int(s.frames or 0)
        rate = s.average_rate or s.guessed_rate
        n = 0
        try:
            for frame in c.decode(s):
                # exact times (Fractions), so that ties in --fps resampling are ties
                t = (frame.pts * frame.time_base if frame.pts is not None and frame.time_base
                     else fractions.Fraction(n) / (rate or 1))
                yield t, _rotate(frame.to_ndarray(format="rgb24"), frame.rotation) if convert else None
                n += 1
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot decode video {path} after {n} frames: {_reason(e)} "
                             "(damaged file; re-encode or remove it)") from None
        if n == 0:
            raise VideoError(f"video {path} has no decodable frame (damaged or empty file; remove it)")
        # The container lists how many frames it holds (mp4, mov, avi): fewer decoded means a
        # truncated file. One frame of slack for containers that count an extra one.
        if listed and n < listed - max(1, listed // 100):
            raise VideoError(f"video {path} is truncated: {n} of the {listed} frames its container "
                             "lists could be decoded (copy it again or remove it)")
    finally:
        c.close()


def _resampled(decoded, fps):
    """(seconds since the first frame, payload) at `fps`: output frame j shows the decoded
    frame nearest to t0 + j / fps; every decoded frame when fps is None."""
    if not fps:
        t0 = None
        for t, item in decoded:
            t0 = t if t0 is None else t0
            yield t - t0, item
        return
    fps = fractions.Fraction(fps).limit_denominator(1000000)
    j, t0, prev = 0, None, None
    for t, item in decoded:
        if t0 is None:
            t0 = t
        while t0 + j / fps <= t:
            tj = t0 + j / fps
            yield j / fps, (prev[1] if prev is not None and tj - prev[0] <= t - tj else item)
            j += 1
        prev = (t, item)


def read_timed_frames(path, fps=None, short_side=0):
    """Yield (seconds since the first frame as a Fraction, RGB frame) for what read_frames yields."""
    for t, rgb in _resampled(_decoded(path), fps):
        yield t, _resize(rgb, short_side)


def resized(frames, short_side, sizes):
    """The frames scaled down to short_side (0: as they are); sizes["sourceSize"] and
    sizes["outputSize"] get the first frame's (width, height) before and after."""
    for rgb in frames:
        out = _resize(rgb, short_side or 0)
        if not sizes:
            sizes["sourceSize"], sizes["outputSize"] = list(rgb.shape[1::-1]), list(out.shape[1::-1])
        yield out


def read_frames(path, fps=None, short_side=0):
    """Yield the RGB frames of a video, (H, W, 3) uint8 (see the module docstring)."""
    for _, rgb in read_timed_frames(path, fps, short_side):
        yield rgb


def frame_times(path, fps=None):
    """The times (seconds since the first frame, Fractions) of the frames read_frames yields,
    found by decoding the whole file without converting a frame (a damaged file raises
    VideoError here, before any other work)."""
    return [t for t, _ in _resampled(_decoded(path, convert=False), fps)]


class VideoWriter:
    """Encode RGB frames one at a time (all of the same size) into `path`; see write_video.

        with VideoWriter(path, fps) as w:
            w.write(rgb)"""

    def __init__(self, path, fps, codec="libx264", options=None, pix_fmt=None, container_options=None):
        self.path, self.fps, self.codec = os.fspath(path), fps, codec
        self.options, self.pix_fmt, self.container_options = options, pix_fmt, container_options
        self.container = self.stream = None

    def _start(self, h, w):
        av = _av()
        self.container = av.open(self.path, "w", options=self.container_options or {})
        s = self.container.add_stream(self.codec, rate=fractions.Fraction(self.fps).limit_denominator(1001))
        s.width, s.height = w, h
        s.pix_fmt = self.pix_fmt or ("yuvj420p" if self.codec == "mjpeg" else "yuv420p")
        s.thread_count = 1
        opts = {"crf": "17", "preset": "medium"} if self.codec == "libx264" else {}
        opts.update(self.options or {})
        s.options = opts
        self.stream = s

    def write(self, rgb):
        if self.container is None:
            self._start(*rgb.shape[:2])
        frame = _av().VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for p in self.stream.encode(frame):
            self.container.mux(p)

    def close(self):
        if self.container is not None:
            for p in self.stream.encode():
                self.container.mux(p)
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_video(path, frames, fps, codec="libx264", options=None, pix_fmt=None, container_options=None):
    """Encode RGB frames (N, H, W, 3) uint8 into `path` (the container from its extension).
    libx264 runs on one thread with a fixed preset, so the bytes are the same every time.
    `options` go to the encoder, `container_options` to the muxer (e.g. movflags=faststart)."""
    with VideoWriter(path, fps, codec, options, pix_fmt, container_options) as w:
        for rgb in np.asarray(frames):
            w.write(rgb)
