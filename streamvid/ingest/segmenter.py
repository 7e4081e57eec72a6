"""Streaming DySeg: cut segments one frame at a time, by the rule in ``streamvid.compress.dyseg``.

Two segmenters with one interface (``push(t, frame)``, ``flush()``, ``open_length``):

- :class:`StreamingSegmenter`: g is a pluggable pixel feature, a cheap 16 x 16 thumbnail by
  default; closed segments are raw frames, encoded later in one burst.
- :class:`EncoderSegmenter`: frames are encoded as they arrive, in micro-batches, and g is the
  encoder's frame-level feature (docs/algorithms.md, DySeg: the pooled output, or the mean
  token of the frame when there is no pooling head). Each encoded frame is folded into the
  open segment's :class:`~streamvid.compress.incremental.IncrementalSegment`, so a closed
  segment comes out compressed (:class:`EncodedSegment`). The thumbnail cut can run before
  it as an optional pre-filter (a thumbnail cut closes the segment too).

A change of frame size also cuts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from streamvid.compress.base import Compressor
from streamvid.compress.dyseg import CutRule
from streamvid.compress.incremental import IncrementalSegment
from streamvid.errors import ConfigError
from streamvid.types import CompressedSegment, Segment, TokenGrid

__all__ = ["EncodedSegment", "EncoderSegmenter", "StreamingSegmenter", "frame_features", "thumbnail_feature"]


def thumbnail_feature(frame: np.ndarray, size: int = 16) -> torch.Tensor:
    """uint8 [H, W, 3] -> fp32 [size * size * 3]: area-averaged thumbnail in [-0.5, 0.5]."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    x = F.adaptive_avg_pool2d(x, (size, size))  # (1, 3, size, size)
    return (x / 255.0 - 0.5).flatten()


def _cut_rule(tau_seg: float, min_len: int, max_len: int) -> CutRule:
    """The streaming cut rule, or a ConfigError that names the bad option."""
    try:
        return CutRule(tau_seg=tau_seg, min_len=min_len, max_len=max_len)
    except ValidationError as err:
        raise ConfigError(f"bad segmenter options: {err}") from None


class StreamingSegmenter:
    """Push frames one at a time; get back each Segment as it closes."""

    def __init__(
        self,
        tau_seg: float = 0.9,
        min_len: int = 2,
        max_len: int = 16,
        *,
        feature: Callable[[np.ndarray], torch.Tensor] = thumbnail_feature,
        stream_id: str = "default",
    ) -> None:
        self.rule = _cut_rule(tau_seg, min_len, max_len)
        self.feature = feature
        self.stream_id = stream_id
        self._frames: list[np.ndarray] = []
        self._times: list[float] = []
        self._last_feature: torch.Tensor | None = None
        self._index = 0

    @property
    def open_length(self) -> int:
        return len(self._frames)

    def push(self, t: float, frame: np.ndarray) -> Segment | None:
        """Add a frame; returns the segment it closed, if any."""
        g = self.feature(frame)
        closed = None
        if self._frames:
            sim = float(F.cosine_similarity(self._last_feature, g, dim=0))
            same_size = frame.shape == self._frames[0].shape
            if not same_size or self.rule.cut_before(len(self._frames), sim):
                closed = self._close()
        self._frames.append(frame)
        self._times.append(t)
        self._last_feature = g
        return closed

    def flush(self) -> Segment | None:
        """End of stream: close the open segment, if any."""
        return self._close() if self._frames else None

    def _close(self) -> Segment:
        segment = Segment(
            frames=torch.from_numpy(np.stack(self._frames)),  # (T, H, W, 3)
            timestamps=torch.tensor(self._times, dtype=torch.float64),
            stream_id=self.stream_id,
            index=self._index,
        )
        self._index += 1
        self._frames, self._times = [], []
        return segment


def frame_features(grid: TokenGrid) -> torch.Tensor:
    """The frame-level feature g of DySeg: tokens [T, h, w, D] -> fp32 [T, D], the mean token of
    each frame (the pooled output when the encoder's tokens are already pooled)."""
    return grid.tokens.float().mean(dim=(1, 2))


@dataclass(frozen=True)
class EncodedSegment(Segment):
    """A closed Segment that was encoded and compressed on the way (see :class:`EncoderSegmenter`).

    compressed: its CompressedSegment (segment index = the segment's ``index``);
    encode_seconds / compress_seconds: time spent on its frames.
    """

    compressed: CompressedSegment | None = None
    encode_seconds: float = 0.0
    compress_seconds: float = 0.0


class EncoderSegmenter:
    """Encode frames in micro-batches as they arrive; cut on the encoder's frame features.

    encode: uint8 [b, H, W, 3] frames + float64 [b] seconds -> TokenGrid [b / s, h, w, D]
    (s = ``frames_per_step``, frames folded into one temporal token, e.g. Qwen2.5-VL's 2).
    compressor: compresses each segment (incrementally for InfoMerge/FastVID).
    micro_batch: frames encoded at once (rounded up to a multiple of s); :meth:`idle` encodes a
    shorter batch (the pipeline calls it when no frame is waiting, so a live frame never waits
    for the batch to fill). prefilter: also cut where the thumbnail rule cuts.
    The cut rule counts frames, as :class:`StreamingSegmenter` does; with s > 1 cuts fall
    between temporal tokens. Similarities reach the host once per micro-batch, not per frame.
    Thread-safe: :meth:`peek` may run while another thread pushes.
    """

    def __init__(
        self,
        encode: Callable[[torch.Tensor, torch.Tensor], TokenGrid],
        compressor: Compressor,
        tau_seg: float = 0.9,
        min_len: int = 2,
        max_len: int = 16,
        *,
        micro_batch: int = 8,
        frames_per_step: int = 1,
        prefilter: bool = False,
        stream_id: str = "default",
    ) -> None:
        self.rule = _cut_rule(tau_seg, min_len, max_len)
        if micro_batch < 1 or frames_per_step < 1:
            raise ConfigError("micro_batch and frames_per_step must be >= 1")
        self.encode = encode
        self.stream_id = stream_id
        self.step = frames_per_step
        self.micro_batch = -(-micro_batch // frames_per_step) * frames_per_step  # a multiple of the step
        self.prefilter = prefilter
        self.state = IncrementalSegment(compressor, stream_id=stream_id)
        self._lock = threading.RLock()
        self._frames: list[np.ndarray] = []  # raw frames of the open segment (encoded)
        self._times: list[float] = []
        self._pending: list[tuple[float, np.ndarray, bool]] = []  # (t, frame, cut before it) not yet encoded
        self._last_g: torch.Tensor | None = None  # [D] feature of the last encoded token frame
        self._last_thumb: torch.Tensor | None = None
        self._index = 0
        self._encode_s = 0.0
        self._compress_s = 0.0

    @property
    def open_length(self) -> int:
        """Frames of the open segment, encoded or waiting to be."""
        return len(self._frames) + len(self._pending)

    @property
    def pending(self) -> int:
        """Frames waiting for the next micro-batch."""
        return len(self._pending)

    def push(self, t: float, frame: np.ndarray) -> list[EncodedSegment]:
        """Add a frame; returns the segments it closed (encoding happens when a micro-batch fills)."""
        with self._lock:
            out: list[EncodedSegment] = []
            last = self._pending[-1][1] if self._pending else (self._frames[-1] if self._frames else None)
            resized = last is not None and frame.shape != last.shape
            if resized and self._pending:
                out += self._encode_pending()  # a micro-batch holds one frame size
            cut = resized
            if self.prefilter:
                thumb = thumbnail_feature(frame)
                if self._last_thumb is not None and self.open_length:
                    sim = float(F.cosine_similarity(self._last_thumb, thumb, dim=0))
                    cut = cut or self.rule.cut_before(self.open_length, sim)
                self._last_thumb = thumb
            self._pending.append((t, frame, cut))
            if len(self._pending) >= self.micro_batch:
                out += self._encode_pending()
            return out

    def idle(self) -> list[EncodedSegment]:
        """Encode what is waiting (whole temporal steps only); returns the segments that closed."""
        with self._lock:
            whole = len(self._pending) - len(self._pending) % self.step
            return self._encode_pending(whole) if whole else []

    def flush(self) -> list[EncodedSegment]:
        """End of stream: encode what is waiting and close the open segment."""
        with self._lock:
            out = self._encode_pending() if self._pending else []
            if self._frames:
                out.append(self._close())
            return out

    def peek(self) -> CompressedSegment | None:
        """The open segment (waiting frames encoded first) compressed now; None when it is empty.
        Its segment index is the one it will be stored under."""
        with self._lock:
            self._encode_pending(len(self._pending) - len(self._pending) % self.step)
            if not self._frames:
                return None
            t0 = time.perf_counter()
            out = self.state.peek(self._index)
            self._compress_s += time.perf_counter() - t0
            return out

    def _encode_pending(self, count: int | None = None) -> list[EncodedSegment]:
        """Encode the first ``count`` waiting frames (default all) as one micro-batch."""
        batch = self._pending[: len(self._pending) if count is None else count]
        if not batch:
            return []
        self._pending = self._pending[len(batch) :]
        t0 = time.perf_counter()
        frames = torch.from_numpy(np.stack([f for _, f, _ in batch]))  # (b, H, W, 3)
        times = torch.tensor([t for t, _, _ in batch], dtype=torch.float64)
        grid = self.encode(frames, times)
        g = frame_features(grid)  # (b', D), b' = ceil(b / step) token frames
        chain = g if self._last_g is None else torch.cat([self._last_g[None], g])
        sims = F.cosine_similarity(chain[:-1], chain[1:], dim=-1).tolist()  # one host transfer per batch
        if self._last_g is None:
            sims = [1.0, *sims]  # the first frame has nothing to compare with
        self._last_g = g[-1]
        t1 = time.perf_counter()
        self._encode_s += t1 - t0
        out: list[EncodedSegment] = []
        for i in range(grid.num_frames):
            members = batch[i * self.step : (i + 1) * self.step]  # the frames of token frame i
            forced = any(c for _, _, c in members)
            if self._frames and (forced or self.rule.cut_before(len(self._frames), sims[i])):
                out.append(self._close())
            t2 = time.perf_counter()
            self.state.add(grid.slice(i, i + 1))
            self._compress_s += time.perf_counter() - t2
            self._frames += [f for _, f, _ in members]
            self._times += [t for t, _, _ in members]
        return out

    def _close(self) -> EncodedSegment:
        t0 = time.perf_counter()
        compressed = self.state.close(self._index)
        self._compress_s += time.perf_counter() - t0
        segment = EncodedSegment(
            frames=torch.from_numpy(np.stack(self._frames)),  # (T, H, W, 3)
            timestamps=torch.tensor(self._times, dtype=torch.float64),
            stream_id=self.stream_id,
            index=self._index,
            compressed=compressed,
            encode_seconds=self._encode_s,
            compress_seconds=self._compress_s,
        )
        self._index += 1
        self._frames, self._times = [], []
        self._encode_s = self._compress_s = 0.0
        return segment
