"""Video sources: files, network streams, webcams and Python iterables, one interface.

A source yields :class:`RawFrame` lazily: the timestamp comes from pts and
time_base, and pixels are converted (and resized, once) only for frames the
sampler keeps. ``frames()`` may be called again to reconnect a live source.

PyAV sources check what they read (:mod:`streamvid.ingest.damage`): each ``frames()`` pass
leaves a :class:`~streamvid.ingest.damage.DamageReport` in ``source.damage``; with
``strict=True`` the first hole raises instead. :func:`probe_source` opens a source and
decodes one frame, so unreadable files fail before any model is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from streamvid.errors import (
    CorruptVideoError,
    DamagedVideoError,
    EmptyFileError,
    NoVideoStreamError,
    ShapeError,
    SourceError,
    SourceNotFoundError,
    TruncatedVideoError,
    UnsupportedCodecError,
)
from streamvid.ingest.damage import (
    SKIP_BYTES,
    TAIL_BYTES,
    DamageReport,
    Hole,
    end_tolerance,
    gap_threshold,
)

__all__ = [
    "RawFrame",
    "VideoSource",
    "FileSource",
    "NetworkSource",
    "WebcamSource",
    "IterableSource",
    "SourceInfo",
    "open_source",
    "probe_source",
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
    strict: bool = False  # raise at the first hole instead of recording it in ``damage``
    min_gap: float | None = None  # seconds without frames that make a hole (None: from the frame rate)
    damage: DamageReport | None = None  # what the last ``frames()`` pass found (None: not checked)

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
    """Shared decoding loop: timestamps from pts, typed errors, and the damage checks of
    :mod:`streamvid.ingest.damage` (holes are recorded in ``damage``; ``strict`` raises at the first).

    Packets are sent to the decoder one by one (not through ``container.decode``) so that a
    packet the decoder rejects is skipped and counted instead of ending the read, and so that
    zero-byte packets, which FFmpeg's decoders refuse with EINVAL ("avcodec_send_packet()
    returned 22"; Theora writes them for repeated frames), become repeats of the previous frame.
    """

    def __init__(
        self,
        target: str,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: tuple[float, float] | None = None,
        strict: bool = False,
    ) -> None:
        self.target = target
        self.name = target
        self.format = format
        self.options = dict(options or {})
        self.timeout = timeout
        self.strict = strict
        self.damage = DamageReport()

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

    def _video_stream(self, container: Any) -> Any:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "nothing"
            raise NoVideoStreamError(f"{self.target} has no video stream (it holds {kinds}); pass a video")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise UnsupportedCodecError(
                f"{self.target}: no decoder for its video codec in this FFmpeg build; re-encode it, "
                f"for example `{_REENCODE.format(src=self.target)}`, or install a PyAV build with that decoder"
            )
        return stream

    def _declared(self, container: Any, stream: Any) -> tuple[float | None, bool]:
        """(declared duration in seconds, whether it is only an estimate from the bitrate).

        The video stream's own duration when the container states one (an audio track may run
        longer), else the container's.
        """
        known = []
        if stream.duration is not None and stream.time_base is not None:
            known.append(float(stream.duration * stream.time_base))
        if "avi" in (container.format.name or "") and stream.frames and stream.time_base is not None:
            known.append(float(stream.frames * stream.time_base))  # the header's length, kept when the index is lost
        if not known and container.duration is not None:
            known.append(container.duration / 1e6)  # AV_TIME_BASE
        estimated = "mpegts" in (container.format.name or "")  # duration guessed from bitrate
        return (max(known) if known else None), estimated

    def frames(self) -> Iterator[RawFrame]:
        self.damage = DamageReport()
        container = self._open()
        try:
            stream = self._video_stream(container)
            # frame threads hold back a frame per thread: a live source decodes with slice threads
            # only, so each frame is out as soon as its packet is in
            stream.thread_type = "SLICE" if self.live else "AUTO"
            declared, estimated = self._declared(container, stream)
            if declared is not None and self.duration is None and not self.live:
                self.duration = declared
            reader = _Reader(self, container, stream, self.damage, None if estimated else self.duration)
            yield from reader.run()
        finally:
            container.close()


_REENCODE = "ffmpeg -i {src} -c:v libx264 -pix_fmt yuv420p -c:a aac out.mp4"
_COUNTED_TIMESTAMPS = ("avi",)  # demuxers that number frames: lost frames do not show as a pts gap
_GIVE_UP_ERRORS = 64  # packets rejected before any frame decoded: stop, the stream is not decodable
_DECODER_DELAY = (os.cpu_count() or 1) + 1  # frames a frame-threaded decoder may hold back


@dataclass
class _Event:
    """Damage seen while reading packets, in packet time (seconds): data skipped or rejected."""

    start: float
    end: float
    errors: int = 0
    skipped: int = 0


class _Reader:
    """One pass over a container: packets -> frames with times, holes recorded on the way.

    Damage is seen while reading packets (skipped bytes, rejected packets) and located in
    packet time; a hole is decided when decoded frames come out, which with frame threading
    is some frames later, so events are matched to output gaps within ``slack`` seconds.
    """

    def __init__(self, source: _PyAVSource, container: Any, stream: Any, report: DamageReport, declared: float | None):
        self.source = source
        self.container = container
        self.stream = stream
        self.report = report
        self.declared = declared
        self.time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        self.nominal_step = 1.0 / float(rate) if rate and float(rate) <= 240 else None  # avi may claim 1000 fps
        self.recent_steps: deque[float] = deque(maxlen=15)
        self.min_gap = source.min_gap
        self.track_bytes = not source.live
        self.counted = any(name in (container.format.name or "") for name in _COUNTED_TIMESTAMPS)
        self.start_pts: int | None = None  # pts of the first decoded frame: time 0
        self.packet_origin: int | None = None  # pts of the first packet, until a frame is decoded
        self.last_t: float | None = None
        self.last_frame: RawFrame | None = None
        self.count = 0
        self.shifts: list[tuple[int, float]] = []  # (from pts, seconds added): counted timestamps after a skip
        self.max_end: int | None = None  # largest byte offset read so far
        self.last_size = 0
        self.bytes_read = 0
        self.skip = 0  # bytes skipped since the last video packet
        self.last_packet_t: float | None = None
        self.events: list[_Event] = []
        self.rejected = 0  # EINVAL answers: the decoder refuses the stream's packets
        self.last_error: Exception | None = None
        self.repeats: list[int] = []  # pts of zero-byte packets not yet emitted

    @property
    def step(self) -> float:
        """Typical seconds between frames: the median of recent intervals, else the nominal rate."""
        if self.recent_steps:
            return sorted(self.recent_steps)[len(self.recent_steps) // 2]
        return self.nominal_step or 0.04

    @property
    def slack(self) -> float:
        return (_DECODER_DELAY + 2) * self.step

    # -- packets --------------------------------------------------------------------------

    def packets(self) -> Iterator[Any]:
        """Every stream's packets (their sizes account for the bytes read); demux errors
        are counted and reading goes on, up to 3 in a row."""
        import av

        failures = 0
        while True:
            try:
                for packet in self.container.demux():
                    failures = 0
                    yield packet
                return
            except av.error.EOFError:
                return
            except av.error.FFmpegError as err:
                if self.source.live:
                    raise SourceError(f"{self.source.target}: stream read failed: {err}") from None
                self.report.demux_errors += 1
                self.last_error = err
                t = self.last_packet_t or 0.0
                self.add_event(_Event(t, t, errors=1))
                failures += 1
                if failures > 3:
                    return

    def account(self, packet: Any) -> None:
        """Byte positions: a jump past what was read means the demuxer skipped data."""
        if not self.track_bytes or packet.pos is None or packet.pos < 0 or packet.size <= 0:
            return
        if self.max_end is not None:
            jump = packet.pos - self.max_end
            if jump > max(SKIP_BYTES, self.last_size // 10):
                self.skip += jump
                self.report.skipped_bytes += jump
        self.max_end = packet.pos + packet.size if self.max_end is None else max(self.max_end, packet.pos + packet.size)
        self.last_size = packet.size
        self.bytes_read += packet.size

    def add_event(self, event: _Event) -> None:
        last = self.events[-1] if self.events else None
        if last is not None and event.start <= last.end + self.step * 1.5:
            last.end = max(last.end, event.end)
            last.errors += event.errors
            last.skipped += event.skipped
        else:
            self.events.append(event)

    def video_packet(self, packet: Any) -> None:
        """Locate damage seen before this packet in packet time."""
        if packet.pts is None:
            return
        if self.packet_origin is None:
            self.packet_origin = packet.pts
        if self.skip:
            prev = self.last_packet_t if self.last_packet_t is not None else 0.0
            if self.counted and self.bytes_read and self.last_packet_t is not None:
                rate = self.bytes_read / (self.last_packet_t + self.step)  # bytes per media second so far
                missing = self.skip / rate
                if missing > self.step / 2:
                    total = (self.shifts[-1][1] if self.shifts else 0.0) + missing
                    self.shifts.append((packet.pts, total))
            self.add_event(_Event(prev, self.packet_time(packet.pts), skipped=self.skip))
            self.skip = 0
        self.last_packet_t = self.packet_time(packet.pts)

    def packet_time(self, pts: int) -> float:
        shift = 0.0
        for since, total in self.shifts:
            if pts >= since:
                shift = total
        origin = self.start_pts if self.start_pts is not None else self.packet_origin
        return float((pts - (origin or 0)) * self.time_base) + shift

    def run(self) -> Iterator[RawFrame]:
        import av

        for packet in self.packets():
            self.account(packet)
            if packet.stream_index != self.stream.index:
                continue
            if packet.size == 0:
                if packet.buffer_ptr and packet.pts is not None:
                    self.repeats.append(packet.pts)
                continue  # a flush packet (null data) or an empty one: the decoder would answer EINVAL
            self.video_packet(packet)
            try:
                decoded = packet.decode()
            except av.error.DecoderNotFoundError:
                raise self.unsupported(None) from None
            except av.error.EOFError:
                decoded = []
            except av.error.FFmpegError as err:
                self.rejected_packet(err)
                continue
            for frame in decoded:
                yield from self.emit(frame)
        try:
            flushed = self.stream.codec_context.decode(None)
        except av.error.FFmpegError as err:
            self.rejected_packet(err)
            flushed = []
        for frame in flushed:
            yield from self.emit(frame)
        yield from self.emit_repeats(None)
        self.finish()

    def rejected_packet(self, err: Exception) -> None:
        import av

        self.report.decode_errors += 1
        self.last_error = err
        if isinstance(err, av.error.ArgumentError):
            self.rejected += 1
        t = self.last_packet_t or 0.0
        self.add_event(_Event(max(0.0, t - self.step), t, errors=1))
        if self.count == 0 and self.report.decode_errors >= _GIVE_UP_ERRORS:
            raise self.undecodable()

    # -- frames ---------------------------------------------------------------------------

    def emit(self, frame: Any) -> Iterator[RawFrame]:
        pts = frame.pts
        if pts is None or self.time_base is None:
            if self.source.pts_based:
                log.warning(
                    "%s: frames without pts; using arrival order at %.3f s per frame", self.source.target, self.step
                )
                self.source.pts_based = False
            t = 0.0 if self.last_t is None else self.last_t + self.step
        else:
            if self.start_pts is None:
                self.start_pts = pts
            t = self.packet_time(pts)
        yield from self.emit_repeats(t)
        if self.last_t is not None:
            self.check(self.last_t, t)
            t = max(t, self.last_t)  # reordered or repeated pts: keep time monotone
        raw = _av_frame(frame, t)
        yield raw
        self.advance(t)
        self.last_frame = raw

    def advance(self, t: float) -> None:
        if self.last_t is not None and t > self.last_t:
            self.recent_steps.append(t - self.last_t)
        self.count += 1
        self.last_t = t

    def emit_repeats(self, before: float | None) -> Iterator[RawFrame]:
        """Zero-byte packets: the previous picture again, at the packet's time."""
        while self.repeats and (before is None or self.packet_time(self.repeats[0]) < before):
            t = self.packet_time(self.repeats.pop(0))
            if self.last_frame is None or self.last_t is None or t <= self.last_t:
                continue
            raw = RawFrame(t, self.last_frame.width, self.last_frame.height, self.last_frame.convert)
            self.report.repeated_frames += 1
            yield raw
            self.advance(t)

    def check(self, last: float, t: float) -> None:
        """Decide the holes between the last frame (at ``last``) and one at ``t``."""
        dt = t - last
        if dt > 1.5 * self.step:
            near = [e for e in self.events if e.start <= t + self.slack and e.end >= last - self.slack]
            if near:
                self.events = [e for e in self.events if e not in near]
                errors, skipped = sum(e.errors for e in near), sum(e.skipped for e in near)
                self.hole(Hole(last, t, "corrupt", errors, skipped))
            elif dt > (self.min_gap or gap_threshold(self.step)):
                self.hole(Hole(last, t, "gap"))
        passed = [e for e in self.events if e.end + self.slack < t]  # damage that left no gap (concealed)
        for e in passed:
            self.events.remove(e)
            self.hole(Hole(e.start, max(e.end, e.start), "corrupt", e.errors, e.skipped))

    def finish(self) -> None:
        src = self.source
        if src.live:
            raise SourceError(f"{src.target}: the stream ended")
        if self.count == 0:
            raise self.undecodable()
        last = self.last_t or 0.0
        declared = self.declared
        late = declared is not None and last + end_tolerance(self.step) < declared
        events, self.events = self.events, []
        early = [e for e in events if e.end < last]
        for e in early:
            self.hole(Hole(e.start, e.end, "corrupt", e.errors, e.skipped))
        tail = [e for e in events if e.end >= last]
        if tail:
            end = declared if late and declared is not None else max(e.end for e in tail)
            errors, skipped = sum(e.errors for e in tail), sum(e.skipped for e in tail)
            self.hole(Hole(last, max(end, last), "corrupt", errors, skipped))
        elif late and declared is not None:
            size = _file_size(src.target)
            unread = size - self.max_end if size is not None and self.max_end is not None else 0
            if unread > max(TAIL_BYTES, size // 100 if size else 0):
                self.report.skipped_bytes += unread
                self.hole(Hole(last, declared, "corrupt", skipped_bytes=unread))  # reading stopped with data left
            else:
                self.hole(Hole(last, declared, "truncated"))

    def hole(self, hole: Hole) -> None:
        self.report.holes.append(hole)
        src = self.source
        if not src.strict:
            log.warning(
                "%s: %s; ingest goes on (strict mode, --strict on the command line, makes this an error)",
                src.target,
                hole.describe(),
            )
            return
        where = f"{src.target}: {hole.describe()}; the frames before it were delivered"
        if hole.reason == "truncated":
            raise TruncatedVideoError(
                f"{where}. The file is truncated: copy or record it again, or ingest without strict to keep "
                "what is there",
                time=hole.start,
                frame=self.count,
                holes=self.report.holes,
            )
        fix = (
            "if the recording really has no frames there (variable frame rate), ingest without strict"
            if hole.reason == "gap"
            else f"re-encode the readable parts (`{_REENCODE.format(src=src.target)}`) or ingest without strict "
            "to skip the damage"
        )
        raise DamagedVideoError(f"{where}. {fix}", time=hole.start, frame=self.count, holes=self.report.holes)

    def unsupported(self, err: Exception | None) -> UnsupportedCodecError:
        codec = self.stream.codec_context.name
        why = f" ({err})" if err is not None else ""
        return UnsupportedCodecError(
            f"{self.source.target}: this FFmpeg build's {codec!r} decoder cannot decode the stream{why}; "
            f"re-encode it, for example `{_REENCODE.format(src=self.source.target)}`"
        )

    def undecodable(self) -> SourceError:
        if self.rejected:
            return self.unsupported(self.last_error)
        detail = f": {self.last_error}" if self.last_error is not None else ""
        return CorruptVideoError(
            f"{self.source.target}: no frame could be decoded ({self.report.decode_errors} packets rejected{detail}); "
            f"the file is damaged or its codec is not supported. If ffmpeg can play it, re-encode it "
            f"(`{_REENCODE.format(src=self.source.target)}`)",
            None,
            0,
        )


def _file_size(target: str) -> int | None:
    try:
        return os.path.getsize(target)
    except OSError:
        return None


def _mp4_index_missing(path: Path) -> bool | None:
    """For an ISO-BMFF file (mp4, mov): True when its top-level boxes hold no ``moov`` (the
    index was never written, or was cut off with the end of the file), False when they do.
    None: not ISO-BMFF."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            pos = 0
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                box, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if pos == 0 and kind not in (b"ftyp", b"mdat", b"free", b"skip", b"wide", b"moov"):
                    return None  # not ISO-BMFF
                if kind == b"moov":
                    return False
                if box == 1 and len(head) >= 16:
                    box = int.from_bytes(head[8:16], "big")  # 64-bit size
                elif box == 0:
                    box = size - pos  # to the end of the file
                if box < 8:
                    return True  # garbage where the next box should be: no index found
                pos += box
            return pos > 0
    except OSError:
        return None


class FileSource(_PyAVSource):
    """A local video file of any container/codec PyAV decodes.

    strict: the first hole (see :mod:`streamvid.ingest.damage`) raises
    :class:`~streamvid.errors.DamagedVideoError` instead of being recorded in ``damage``.
    """

    def __init__(self, path: str | Path, *, strict: bool = False) -> None:
        path = Path(path)
        if not path.exists():
            raise SourceNotFoundError(f"{path} does not exist; check the path")
        if path.is_dir():
            raise SourceError(f"{path} is a directory; pass a video file")
        if path.stat().st_size == 0:
            raise EmptyFileError(f"{path} is empty (0 bytes); the copy or recording did not finish: get the file again")
        self.path = path
        super().__init__(str(path), strict=strict)

    def _open_error(self, err: Exception) -> SourceError:
        import av

        index_missing = _mp4_index_missing(self.path)
        if index_missing is False:
            return CorruptVideoError(
                f"{self.path} is an mp4/mov file FFmpeg cannot read ({err}); its index (the 'moov' atom) is "
                "there but damaged. Use a complete copy if one exists, or try an mp4 repair tool",
                None,
                0,
            )
        if index_missing:
            return TruncatedVideoError(
                f"{self.path} is truncated or unfinished: its index (the mp4 'moov' atom) is missing, so no frame "
                "can be found. If a complete copy exists, remux it with "
                "`ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4` (index first, so a cut copy stays "
                "readable); otherwise record it again",
                time=None,
                frame=0,
            )
        if isinstance(err, av.error.InvalidDataError):
            return NoVideoStreamError(
                f"{self.path} is not a video: FFmpeg recognises no audio/video format in it; pass a video file"
            )
        return super()._open_error(err)


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
    source: Any,
    *,
    open_timeout: float = 10.0,
    read_timeout: float = 10.0,
    live: bool | None = None,
    strict: bool | None = None,
    **options: Any,
) -> VideoSource:
    """Pick the source for a path, URL, device or iterable.

    - a VideoSource: returned as is
    - ``rtsp://``, ``http(s)://`` (HLS too), ``tcp://``, ``udp://``, ``rtmp://``, ``srt://``: NetworkSource
    - ``/dev/videoN``: WebcamSource (``width``, ``height``, ``fps``, ``input_format`` options)
    - any other string or Path: FileSource
    - any other iterable: IterableSource (``live`` option)

    strict (when given): raise at the first hole instead of recording it (see ``damage``).
    """
    made = _make_source(source, open_timeout, read_timeout, live, options)
    if strict is not None:
        made.strict = strict
    return made


def _make_source(
    source: Any, open_timeout: float, read_timeout: float, live: bool | None, options: dict[str, Any]
) -> VideoSource:
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


@dataclass(frozen=True)
class SourceInfo:
    """Basic facts about a video, from :func:`probe_source`.

    duration: declared, in seconds (None when the container states none, or only estimates
    it from the bitrate); fps: the stream's average rate (None when unknown); width, height:
    of the first decoded frame.
    """

    name: str
    container: str
    codec: str
    width: int
    height: int
    fps: float | None
    duration: float | None
    live: bool


def probe_source(source: str | Path, *, open_timeout: float = 10.0, read_timeout: float = 10.0) -> SourceInfo:
    """Open a file, URL or device and decode its first frame only: cheap, so call it before
    loading any model. Raises the typed error a full read would raise at the start
    (:class:`~streamvid.errors.EmptyFileError`, :class:`~streamvid.errors.NoVideoStreamError`,
    :class:`~streamvid.errors.TruncatedVideoError` for an mp4 without its index,
    :class:`~streamvid.errors.UnsupportedCodecError`, ...).
    """
    src = open_source(source, open_timeout=open_timeout, read_timeout=read_timeout)
    if not isinstance(src, _PyAVSource):
        raise SourceError(f"cannot probe {src!r}; pass a path, a URL or /dev/videoN")
    container = src._open()
    try:
        stream = src._video_stream(container)
        declared, estimated = src._declared(container, stream)
        frames = _Reader(src, container, stream, DamageReport(), None).run()
        try:
            first = next(frames)
        except StopIteration:  # finish() raises first; kept for the type checker
            raise CorruptVideoError(f"{src.target}: no frame could be decoded", None, 0) from None
        finally:
            frames.close()
        rate = stream.average_rate or stream.guessed_rate
        return SourceInfo(
            name=src.target,
            container=container.format.name or "",
            codec=stream.codec_context.name,
            width=first.width,
            height=first.height,
            fps=float(rate) if rate else None,
            duration=None if estimated or src.live else declared,
            live=src.live,
        )
    finally:
        container.close()


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
