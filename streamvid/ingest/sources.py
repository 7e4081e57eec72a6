"""Video sources: files, network streams, webcams and Python iterables, one interface.

A source yields :class:`RawFrame` lazily: the timestamp comes from pts and
time_base, and pixels are converted (and resized, once) only for frames the
sampler keeps. ``frames()`` may be called again to reconnect a live source.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from streamvid.errors import (
    CorruptVideoError,
    NoVideoStreamError,
    ShapeError,
    SourceError,
    SourceNotFoundError,
    TruncatedVideoError,
    UnsupportedCodecError,
)

__all__ = [
    "RawFrame",
    "VideoSource",
    "FileSource",
    "NetworkSource",
    "WebcamSource",
    "IterableSource",
    "open_source",
    "read_frames",
    "NETWORK_SCHEMES",
]

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "tcp", "udp", "srt", "hls")


@dataclass(frozen=True)
class RawFrame:
    """A decoded frame before conversion: ``time`` in seconds, native size, and a converter.

    ``rgb(width, height)`` returns uint8 [height, width, 3]; the resize happens there,
    in one step with the colour conversion.
    """

    time: float
    width: int
    height: int
    convert: Callable[[int, int], np.ndarray]

    def rgb(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        return self.convert(width or self.width, height or self.height)


class VideoSource(ABC):
    """Something that yields frames with timestamps.

    live: frames arrive in real time and must never be blocked (drop instead).
    reconnectable: ``frames()`` can be called again after a failure.
    pts_based: timestamps come from the stream (False: arrival time).
    duration: declared duration in seconds, when the container states one.
    """

    live: bool = False
    reconnectable: bool = False
    pts_based: bool = True
    duration: float | None = None
    name: str = "source"

    @abstractmethod
    def frames(self) -> Iterator[RawFrame]:
        """Yield frames in time order; raise a SourceError subclass on failure."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _av_frame(frame: Any, t: float) -> RawFrame:
    def convert(width: int, height: int) -> np.ndarray:
        if (width, height) == (frame.width, frame.height):
            return frame.to_ndarray(format="rgb24")
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()

    return RawFrame(t, frame.width, frame.height, convert)


class _PyAVSource(VideoSource):
    """Shared decoding loop: timestamps from pts, typed errors, truncation check."""

    def __init__(
        self,
        target: str,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> None:
        self.target = target
        self.name = target
        self.format = format
        self.options = dict(options or {})
        self.timeout = timeout

    def _open(self) -> Any:
        import av

        try:
            return av.open(self.target, format=self.format, options=self.options, timeout=self.timeout)
        except FileNotFoundError:
            raise SourceNotFoundError(f"{self.target} does not exist; check the path (or the device number)") from None
        except av.error.FFmpegError as err:
            raise self._open_error(err) from None

    def _open_error(self, err: Exception) -> SourceError:
        return SourceError(f"cannot open {self.target} as video: {err}; check that it is a video file FFmpeg can read")

    def frames(self) -> Iterator[RawFrame]:
        import av

        container = self._open()
        try:
            if not container.streams.video:
                kinds = ", ".join(s.type for s in container.streams) or "nothing"
                raise NoVideoStreamError(f"{self.target} has no video stream (it holds {kinds}); pass a video")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise UnsupportedCodecError(
                    f"{self.target}: no decoder for its video codec in this FFmpeg build; "
                    "re-encode it (for example to H.264) or install a PyAV build with that decoder"
                )
            stream.thread_type = "AUTO"
            time_base = stream.time_base
            if container.duration is not None and self.duration is None and not self.live:
                self.duration = container.duration / 1e6  # AV_TIME_BASE
            start_pts: int | None = None
            count = 0
            last_t: float | None = None
            fallback_step = 1.0 / float(stream.average_rate or 25)
            try:
                for frame in container.decode(stream):
                    pts = frame.pts
                    if pts is None or time_base is None:
                        if self.pts_based:
                            log.warning(
                                "%s: frames without pts; using arrival order at %.3f s per frame",
                                self.target,
                                fallback_step,
                            )
                            self.pts_based = False
                        t = 0.0 if last_t is None else last_t + fallback_step
                    else:
                        if start_pts is None:
                            start_pts = pts
                        t = float((pts - start_pts) * time_base)
                    if last_t is not None and t < last_t:
                        t = last_t  # reordered or repeated pts: keep time monotone
                    yield _av_frame(frame, t)
                    count += 1
                    last_t = t
            except av.error.DecoderNotFoundError:
                raise UnsupportedCodecError(
                    f"{self.target}: no decoder for codec {stream.codec_context.name!r}; re-encode "
                    "the video (for example to H.264)"
                ) from None
            except (av.error.InvalidDataError, av.error.PatchWelcomeError, av.error.BugError) as err:
                where = "before the first frame" if last_t is None else f"after {last_t:.2f} s (frame {count})"
                raise CorruptVideoError(
                    f"{self.target} is damaged {where}: {err}; the frames before it were delivered. "
                    "Re-encode or repair the file to read past the damage",
                    time=last_t,
                    frame=count,
                ) from None
            except av.error.FFmpegError as err:
                if self.live:
                    raise SourceError(f"{self.target}: stream read failed: {err}") from None
                raise CorruptVideoError(
                    f"{self.target}: reading failed after {count} frames: {err}", last_t, count
                ) from None
            self._check_complete(container, stream, last_t, count, fallback_step)
        finally:
            container.close()

    def _check_complete(self, container: Any, stream: Any, last_t: float | None, count: int, step: float) -> None:
        if self.live:
            raise SourceError(f"{self.target}: the stream ended")
        if count == 0:
            raise CorruptVideoError(f"{self.target}: no frame could be decoded", None, 0)
        declared = self.duration
        estimated = "mpegts" in (container.format.name or "")  # duration guessed from bitrate
        if declared and not estimated and last_t is not None:
            tolerance = max(1.0, 3 * step)
            if last_t + tolerance < declared:
                raise TruncatedVideoError(
                    f"{self.target} ends at {last_t:.2f} s (frame {count}) but declares "
                    f"{declared:.2f} s; the file is truncated. The frames before were delivered",
                    time=last_t,
                    frame=count,
                )


class FileSource(_PyAVSource):
    """A local video file of any container/codec PyAV decodes."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise SourceNotFoundError(f"{path} does not exist; check the path")
        if path.is_dir():
            raise SourceError(f"{path} is a directory; pass a video file")
        super().__init__(str(path))


class NetworkSource(_PyAVSource):
    """rtsp (tcp transport), http/https/hls, tcp/udp MPEG-TS, rtmp, srt.

    open_timeout / read_timeout in seconds bound every wait on the network.
    """

    live = True
    reconnectable = True

    def __init__(
        self, url: str, *, open_timeout: float = 10.0, read_timeout: float = 10.0, options: dict[str, str] | None = None
    ) -> None:
        scheme = urlparse(url).scheme.lower()
        opts: dict[str, str] = {}
        if scheme in ("rtsp", "rtsps"):
            opts["rtsp_transport"] = "tcp"
        opts.update(options or {})
        super().__init__(url, options=opts, timeout=(open_timeout, read_timeout))

    def _open_error(self, err: Exception) -> SourceError:
        return SourceError(
            f"cannot connect to {self.target}: {err}; check the URL, that the stream is up, "
            "and the network between here and it"
        )


class WebcamSource(_PyAVSource):
    """A V4L2 camera (``/dev/videoN``) with optional size, frame rate and input format."""

    live = True
    reconnectable = True

    def __init__(
        self,
        device: str = "/dev/video0",
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        input_format: str | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            device,
            format="v4l2",
            options=webcam_options(width, height, fps, input_format),
            timeout=(read_timeout, read_timeout),
        )


def webcam_options(
    width: int | None, height: int | None, fps: float | None, input_format: str | None
) -> dict[str, str]:
    """FFmpeg v4l2 options for a camera."""
    opts: dict[str, str] = {}
    if (width is None) != (height is None):
        raise ShapeError("give both width and height for a webcam, or neither")
    if width is not None:
        opts["video_size"] = f"{width}x{height}"
    if fps is not None:
        opts["framerate"] = f"{fps:g}"
    if input_format is not None:
        opts["input_format"] = input_format
    return opts


def _as_rgb(frame: Any) -> np.ndarray:
    arr = frame.numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ShapeError(f"frames must be uint8 [H, W, 3] RGB arrays, got {arr.dtype} {list(arr.shape)}")
    return arr


def _numpy_frame(arr: np.ndarray, t: float) -> RawFrame:
    def convert(width: int, height: int) -> np.ndarray:
        if (width, height) == (arr.shape[1], arr.shape[0]):
            return arr
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
        return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    return RawFrame(t, arr.shape[1], arr.shape[0], convert)


class IterableSource(VideoSource):
    """Any iterable of ``(timestamp, frame)`` pairs or of bare frames (uint8 [H, W, 3]).

    Bare frames have no timestamps: arrival time (seconds since the first frame) is
    used, and ``pts_based`` is False. ``live=True`` for a real-time producer.
    """

    def __init__(self, items: Iterable[Any], *, live: bool = False, name: str = "iterable") -> None:
        self.items = items
        self.live = live
        self.name = name

    def frames(self) -> Iterator[RawFrame]:
        start = None
        last_t = -math.inf
        for item in self.items:
            if isinstance(item, tuple) and len(item) == 2:
                t, frame = float(item[0]), item[1]
            else:
                if self.pts_based:
                    log.warning("%s: frames carry no timestamps; using arrival time", self.name)
                    self.pts_based = False
                now = time.monotonic()
                start = now if start is None else start
                t, frame = now - start, item
            if t < last_t:
                raise ShapeError(f"{self.name}: timestamps go backwards ({t} after {last_t}); sort the frames")
            last_t = t
            yield _numpy_frame(_as_rgb(frame), t)


def open_source(
    source: Any, *, open_timeout: float = 10.0, read_timeout: float = 10.0, live: bool | None = None, **options: Any
) -> VideoSource:
    """Pick the source for a path, URL, device or iterable.

    - a VideoSource: returned as is
    - ``rtsp://``, ``http(s)://`` (HLS too), ``tcp://``, ``udp://``, ``rtmp://``, ``srt://``: NetworkSource
    - ``/dev/videoN``: WebcamSource (``width``, ``height``, ``fps``, ``input_format`` options)
    - any other string or Path: FileSource
    - any other iterable: IterableSource (``live`` option)
    """
    if isinstance(source, VideoSource):
        return source
    if isinstance(source, (str, Path)):
        text = str(source)
        scheme = urlparse(text).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            return NetworkSource(
                text,
                open_timeout=open_timeout,
                read_timeout=read_timeout,
                options={k: str(v) for k, v in options.items()},
            )
        if text.startswith("/dev/video"):
            return WebcamSource(text, read_timeout=read_timeout, **options)
        return FileSource(text)
    if isinstance(source, Iterable):
        return IterableSource(source, live=bool(live))
    raise SourceError(
        f"cannot make a video source from {type(source).__name__}; pass a path, a URL, "
        "/dev/videoN, or an iterable of (timestamp, frame)"
    )


def read_frames(path: str | Path, count: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames spread evenly over a whole video file, timestamps from pts.

    Two passes (times, then pixels of the chosen frames only), so memory does not grow
    with the video's length. size: (width, height) to resize to (default: native).
    Returns frames uint8 [T, H, W, 3] and times float64 [T].
    """
    from streamvid.ingest.sampler import evenly_spaced

    source = FileSource(path)
    times = [frame.time for frame in source.frames()]
    chosen = evenly_spaced(len(times), count)
    wanted = set(chosen)
    picked = [frame.rgb(*(size or (None, None))) for i, frame in enumerate(source.frames()) if i in wanted]
    return np.stack(picked), np.array([times[i] for i in chosen], dtype=np.float64)
