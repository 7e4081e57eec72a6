"""Question answering over a token memory: retrieve -> assemble -> prefill -> decode."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents.timeparse import parse_time_range
from memory import SegmentInfo, TokenMemory
from streamvid.clock import format_clock
from streamvid.embedders import Embedder
from streamvid.errors import ConfigError
from streamvid.models.base import VideoLLM

__all__ = ["Answer", "UsedSegment", "VideoQA"]


@dataclass(frozen=True)
class UsedSegment:
    """A segment an answer looked at (or would have, for evicted ones)."""

    id: int
    stream: str
    start: float
    end: float
    score: float | None
    evicted: bool = False


@dataclass
class Answer:
    """text; segments used (time order); evicted segments the question touched; timings in seconds
    (retrieve, assemble, prefill, decode, total); time_range used as a filter, if any;
    saliency_source and position_layout of the prefill that produced the text (see
    docs/algorithms.md, "Saliency" and "Positions")."""

    question: str
    text: str
    segments: list[UsedSegment] = field(default_factory=list)
    evicted: list[UsedSegment] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    time_range: tuple[float, float] | None = None
    prompt_tokens: int = 0
    saliency_source: str = "none"
    position_layout: str = "none"

    @property
    def nothing_retained(self) -> bool:
        return not self.segments and bool(self.evicted)


def _used(info: SegmentInfo, score: float | None) -> UsedSegment:
    return UsedSegment(info.id, info.stream, info.start, info.end, score, info.evicted)


class VideoQA:
    """Answers questions from a memory with a Video-LLM.

    k: segments retrieved per question. live: always include the newest segment of
    each asked stream. max_prefill_tokens: the prompt budget (default: the model's
    context length); the lowest-scoring segments are dropped until the prompt fits.
    Multi-turn: earlier (question, answer) pairs are kept (``history_turns``).
    The Video-LLM's own lock keeps questions and a concurrent ingest from running the
    model at the same time.
    """

    def __init__(
        self,
        llm: VideoLLM,
        memory: TokenMemory,
        embedder: Embedder,
        *,
        k: int = 4,
        live: bool = False,
        max_prefill_tokens: int | None = None,
        max_new_tokens: int = 128,
        history_turns: int = 4,
    ) -> None:
        self.llm = llm
        self.memory = memory
        self.embedder = embedder
        self.k = k
        self.live = live
        self.max_prefill_tokens = max_prefill_tokens or llm.context_length
        self.max_new_tokens = max_new_tokens
        self.history_turns = history_turns
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation."""
        self.history.clear()

    def _streams(self, streams: Sequence[str] | None) -> list[str]:
        return list(streams) if streams else self.memory.streams()

    def retrieve(
        self, question: str, k: int, time_range: tuple[float, float] | None, streams: Sequence[str] | None
    ) -> list[tuple[SegmentInfo, float | None]]:
        """Segments for a question, best first, live and evicted."""
        if self.embedder.recency_only:
            infos = [
                s for name in self._streams(streams) for s in self.memory.timeline(name, *(time_range or (None, None)))
            ]
            infos.sort(key=lambda s: s.end, reverse=True)
            return [(s, None) for s in infos[:k]]
        query = self.embedder.embed_text([question])
        (hits,) = self.memory.search(query, k=k, time_range=time_range, streams=streams)
        return [(h.segment, h.score) for h in hits]

    def ask(
        self,
        question: str,
        k: int | None = None,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
        *,
        remember: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty; ask something about the video")
        k = k or self.k
        t0 = time.perf_counter()
        if time_range is None:
            time_range = parse_time_range(question, self.memory.end_time(streams))
        found = self.retrieve(question, k, time_range, streams)
        if time_range is not None:  # every segment of the asked time, to tell what was evicted
            covered = {s.id for s, _ in found}
            for name in self._streams(streams):
                found += [
                    (s, None) for s in self.memory.timeline(name, *time_range) if s.evicted and s.id not in covered
                ]
        live = [(s, score) for s, score in found if not s.evicted]
        evicted = sorted({_used(s, score) for s, score in found if s.evicted}, key=lambda u: u.start)
        if self.live:  # the newest segment of every asked stream is always in view
            have = {s.id for s, _ in live}
            for name in self._streams(streams):
                newest = self.memory.newest(name, live_only=True)
                if newest is not None and newest.id not in have:
                    live.append((newest, None))
        retrieve_s = time.perf_counter() - t0
        answer = Answer(question=question, text="", evicted=evicted, time_range=time_range)
        if not live:
            answer.text = self._nothing(time_range, evicted)
            answer.timings = {
                "retrieve": retrieve_s,
                "assemble": 0.0,
                "prefill": 0.0,
                "decode": 0.0,
                "total": time.perf_counter() - t0,
            }
            return answer
        # best first; drop the weakest until the prompt fits the budget
        live.sort(key=lambda p: -(p[1] if p[1] is not None else float("inf")))
        segments = self.memory.get([s.id for s, _ in live])
        history = self.history[-self.history_turns :] if self.history_turns else []
        limit = self.max_prefill_tokens
        while limit is not None and len(segments) > 1:
            if self.llm.prefill_length(question, segments, history=history) <= limit:
                break
            segments, live = segments[:-1], live[:-1]
        prefill = self.llm.build_prefill(question, segments, max_prefill_tokens=limit, history=history)
        generation = self.llm.generate(prefill, max_new_tokens=self.max_new_tokens, on_text=on_text)
        answer.text = generation.text.strip()
        answer.segments = sorted((_used(s, score) for s, score in live), key=lambda u: (u.start, u.stream))
        answer.prompt_tokens = prefill.length
        answer.saliency_source, answer.position_layout = prefill.saliency_source, prefill.position_layout
        answer.timings = {
            "retrieve": retrieve_s,
            "assemble": prefill.assemble_seconds,
            "prefill": generation.prefill_seconds,
            "decode": generation.decode_seconds,
            "total": time.perf_counter() - t0,
        }
        if evicted:
            spans = ", ".join(f"{format_clock(u.start)}-{format_clock(u.end)}" for u in evicted)
            answer.text += (
                f"\n(Note: nothing was retained for {spans}; those segments were evicted under the memory cap.)"
            )
        if remember:
            self.history.append((question, answer.text))
        return answer

    @staticmethod
    def _nothing(time_range: tuple[float, float] | None, evicted: list[UsedSegment]) -> str:
        if evicted:
            spans = ", ".join(f"{format_clock(u.start)}-{format_clock(u.end)}" for u in evicted)
            return (
                f"Nothing was retained for {spans}: those segments were evicted under the memory cap, "
                "so I cannot say what happened then."
            )
        if time_range is not None:
            return f"Nothing was recorded between {format_clock(time_range[0])} and {format_clock(time_range[1])}."
        return "The memory holds no video yet."
