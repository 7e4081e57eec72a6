"""Question answering over a token memory: retrieve -> budget -> assemble -> prefill -> decode.

The question-time token budget. A question gets ``max_visual_tokens`` for its video block
(time texts, markers and segment tokens; default :data:`VISUAL_FRACTION` of the model's
context). The candidates are the live segments of the asked time range and streams that the
budget could show: the top ones by retrieval score and as many again spread evenly over the
asked time (``TokenMemory.cover``), as many as fit at one token each (at most ``k`` retrieved
when ``k`` is given), so a question costs the same over an hour or a month of video. They are
ranked by retrieval score; the newest segment of each
stream and, in live mode, the still-open segment come first. :func:`plan_visual_budget` shares
the budget: the most relevant keep their stored tokens (up to :data:`RELEVANT_SHARE` of it),
the rest of the budget covers the other candidates at one token each (when not all fit, the
top half by relevance and the others spread evenly over the asked time, so the range is
covered coarsely), and what is left goes to those by CABA-style weights
(``sigmoid(tau z(relevance)) |V_k|``, water filling under their stored counts); they are
re-merged down (``remerge``). Segments are laid out in
time order with their timestamps; the answer says which were shown at which grain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from agents.timeparse import parse_time_range
from memory import SegmentEvictedError, SegmentInfo, TokenMemory
from streamvid.clock import format_clock
from streamvid.compress.caba import allocate_budgets
from streamvid.compress.remerge import remerge_many
from streamvid.embedders import Embedder
from streamvid.errors import BudgetError, ConfigError
from streamvid.models.base import VideoLLM
from streamvid.types import CompressedSegment

__all__ = ["RELEVANT_SHARE", "VISUAL_FRACTION", "Answer", "UsedSegment", "VideoQA", "plan_visual_budget"]

# the default max_visual_tokens: this share of the language model's context window
VISUAL_FRACTION = 0.5
# CABA temperature of the relevance weights (the InfoMerge value at r = 0.15, 0.10)
RELEVANCE_TAU = 1.2
# the share of max_visual_tokens the most relevant segments may keep at their stored grain
RELEVANT_SHARE = 0.5


@dataclass(frozen=True)
class UsedSegment:
    """A segment an answer looked at (or would have, for evicted ones)."""

    id: int
    stream: str
    start: float
    end: float
    score: float | None
    evicted: bool = False
    tokens: int = 0  # tokens shown in the prompt
    stored_tokens: int = 0  # tokens the memory holds for it
    open: bool = False  # the stream's still-open segment (not stored yet; id -1)

    @property
    def grain(self) -> float:
        """Shown / stored tokens: 1.0 at the stored grain, less when re-merged for the prompt."""
        return self.tokens / self.stored_tokens if self.stored_tokens else 0.0


@dataclass
class Answer:
    """text; segments used (time order, with the tokens shown and stored); evicted segments the
    question touched; timings in seconds (retrieve, plan, fetch, remerge, assemble, prefill,
    decode, total);
    time_range used as a filter, if any; visual_tokens: the video block's length in the prompt
    (time texts, markers, tokens) against max_visual_tokens; saliency_source and
    position_layout of the prefill that produced the text (see docs/algorithms.md, "Saliency"
    and "Positions")."""

    question: str
    text: str
    segments: list[UsedSegment] = field(default_factory=list)
    evicted: list[UsedSegment] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    time_range: tuple[float, float] | None = None
    prompt_tokens: int = 0
    visual_tokens: int = 0
    max_visual_tokens: int = 0
    saliency_source: str = "none"
    position_layout: str = "none"

    @property
    def nothing_retained(self) -> bool:
        return not self.segments and bool(self.evicted)


def _used(info: SegmentInfo, score: float | None, tokens: int = 0) -> UsedSegment:
    return UsedSegment(info.id, info.stream, info.start, info.end, score, info.evicted, tokens, info.tokens)


@dataclass(frozen=True)
class _Slot:
    """What planning needs of a segment: start_time and budget (SegmentLike), for time texts."""

    start_time: float
    budget: int


def _zscore(x: torch.Tensor) -> torch.Tensor:
    std = x.std(unbiased=False) if x.numel() > 1 else x.new_zeros(())
    return (x - x.mean()) / std if float(std) > 0 else torch.zeros_like(x)


def plan_visual_budget(
    stored: Sequence[int],
    relevance: Sequence[float],
    frames: Sequence[int],
    starts: Sequence[float],
    overhead: Callable[[Sequence[int]], int],
    budget: int,
    *,
    tau: float = RELEVANCE_TAU,
    relevant_share: float = RELEVANT_SHARE,
) -> dict[int, int]:
    """Share ``budget`` visual tokens over candidate segments. -> {candidate index: tokens shown}.

    stored / relevance / frames / starts: per candidate, its stored tokens, relevance (higher is
    more relevant; ties: the earlier index), frame count and start time. overhead(indices): the
    prompt tokens those segments take beyond their own tokens (time texts, markers), so the plan
    is exact for the adapter. The rule:

    1. relevance: in relevance order, candidates keep their stored tokens while they fit in
       ``relevant_share`` of the budget;
    2. coverage: the rest of the budget shows as many other candidates as fit at one token each,
       all when they fit, else the top half of them by relevance and the others spread evenly in
       time (so the asked range is covered coarsely);
    3. the tokens left go to the coverage segments by CABA-style weights
       sigmoid(tau z(relevance)) * frames (water filling, caps = stored, at least 1 each).

    Overhead plus tokens never exceed ``budget``; {} when not even one segment fits.
    """
    n = len(stored)
    if n == 0:
        return {}
    order = sorted(range(n), key=lambda i: (-relevance[i], i))  # most relevant first
    base = overhead([])
    memo: dict[int, int] = {}

    def own(i: int) -> int:  # the time text and markers of one segment
        if i not in memo:
            memo[i] = overhead([i]) - base
        return memo[i]

    plan: dict[int, int] = {}
    spent = base
    for i in order:  # 1. the most relevant at their stored grain
        if spent + own(i) + stored[i] > relevant_share * budget:
            break
        plan[i] = stored[i]
        spent += own(i) + stored[i]
    others = [i for i in order if i not in plan]
    room = budget - spent
    cheapest = min(own(min(others, key=starts.__getitem__)), own(others[0])) if others else 0
    count = min(len(others), max(0, room) // (1 + cheapest))
    cover: list[int] = []
    while count > 0:  # 2. coverage at one token each
        cover = _spread(others, starts, count)
        cost = sum(own(i) for i in cover) + count
        if cost <= room:
            break
        count -= max(1, math.ceil((cost - room) / (cost / count)))
        cover = []
    if cover:  # 3. what is left, by relevance weights
        free = room - sum(own(i) for i in cover)
        rel = torch.tensor([relevance[i] for i in cover], dtype=torch.float64)
        finite = torch.isfinite(rel)
        rel = torch.where(finite, rel, rel[finite].max() if bool(finite.any()) else torch.zeros_like(rel))
        weights = torch.sigmoid(tau * _zscore(rel)) * torch.tensor([frames[i] for i in cover], dtype=torch.float64)
        caps = torch.tensor([stored[i] for i in cover])
        for i, b in zip(cover, allocate_budgets(weights, min(free, int(caps.sum())), caps, minimum=1).tolist()):
            plan[i] = int(b)
    while plan and overhead(list(plan)) + sum(plan.values()) > budget:  # a non-additive layout: trim
        drop = min(plan, key=lambda i: (relevance[i], -i))
        del plan[drop]
    return plan


def _spread(order: list[int], starts: Sequence[float], count: int) -> list[int]:
    """``count`` candidates: all when they fit, else the top half by relevance (``order``) and the
    rest evenly spaced in time over the others: for each of ``need`` evenly spaced times over
    their span, the unpicked candidate that starts nearest it (the candidates themselves need not
    be evenly spaced: the top hits of a search cluster where the question matches)."""
    if count >= len(order):
        return list(order)
    top = order[: count // 2]
    others = sorted(order[count // 2 :], key=lambda i: (starts[i], i))  # time order
    need = count - len(top)
    at = [float(starts[i]) for i in others]  # a few dozen: plain floats beat tensor calls here
    lo, hi = at[0], at[-1]
    free = list(range(len(others)))  # positions not picked yet, in time order
    picked = []
    for j in range(need):
        target = lo + (j + 0.5) * (hi - lo) / need
        best = min(free, key=lambda k: abs(at[k] - target))  # the earliest on ties
        free.remove(best)
        picked.append(others[best])
    return top + sorted(picked, key=lambda i: (starts[i], i))


class VideoQA:
    """Answers questions from a memory with a Video-LLM.

    k: at most this many retrieved segments per question (None: the budget decides, see
    :meth:`retrieve`). live: always include the newest segment of each asked
    stream and, when ``open_segments`` is given and the question touches "now", the streams'
    still-open segments. max_visual_tokens: the video block's budget (default
    :data:`VISUAL_FRACTION` of the context; see the module docstring). max_prefill_tokens: the
    whole prompt's budget (default: the model's context length); the lowest-scoring segments
    are dropped until the prompt fits. open_segments(streams) -> the open segments of those
    streams, compressed now (a live session's). Multi-turn: earlier (question, answer) pairs
    are kept (``history_turns``). The Video-LLM's own lock keeps questions and a concurrent
    ingest from running the model at the same time.
    """

    def __init__(
        self,
        llm: VideoLLM,
        memory: TokenMemory,
        embedder: Embedder,
        *,
        k: int | None = None,
        live: bool = False,
        max_prefill_tokens: int | None = None,
        max_new_tokens: int = 128,
        history_turns: int = 4,
        max_visual_tokens: int | None = None,
        open_segments: Callable[[Sequence[str]], list[CompressedSegment]] | None = None,
    ) -> None:
        self.llm = llm
        self.memory = memory
        self.embedder = embedder
        self.k = k
        self.live = live
        self.max_prefill_tokens = max_prefill_tokens or llm.context_length
        context = llm.context_length or self.max_prefill_tokens
        if max_visual_tokens is None and context is None:
            raise ConfigError("the model does not state its context length; pass max_visual_tokens")
        self.max_visual_tokens = max_visual_tokens or int(VISUAL_FRACTION * context)
        if self.max_visual_tokens < 1 or (k is not None and k < 1):
            raise ConfigError("max_visual_tokens and k must be >= 1")
        self.open_segments = open_segments
        self.max_new_tokens = max_new_tokens
        self.history_turns = history_turns
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation."""
        self.history.clear()

    def _streams(self, streams: Sequence[str] | None) -> list[str]:
        return list(streams) if streams else self.memory.streams()

    def showable(self, budget: int) -> int:
        """The most segments a video block of ``budget`` tokens can show (one token each)."""
        own = self.llm.visual_block_length([_Slot(0.0, 0)]) - self.llm.visual_block_length([])
        return max(1, budget // (1 + max(0, own)))

    def retrieve(
        self,
        question: str,
        k: int | None,
        time_range: tuple[float, float] | None,
        streams: Sequence[str] | None,
        *,
        budget: int | None = None,
    ) -> list[tuple[SegmentInfo, float | None]]:
        """Segments for a question, live and evicted: the top ``k`` by score, best first; when
        ``k`` is None, the top ones a ``budget``-token block could show (default: the instance's
        max_visual_tokens) and after them as many spread evenly over the asked time. A
        recency-only embedder reads the asked timeline whole (newest first)."""
        if self.embedder.recency_only:
            infos = [
                s for name in self._streams(streams) for s in self.memory.timeline(name, *(time_range or (None, None)))
            ]
            infos.sort(key=lambda s: s.end, reverse=True)  # the timeline is read whole: all compete
            return [(s, None) for s in (infos[:k] if k else infos)]
        show = self.showable(budget or self.max_visual_tokens)
        query = self.embedder.embed_text([question])
        (hits,) = self.memory.search(query, k=k or show, time_range=time_range, streams=streams)
        found = [(h.segment, h.score) for h in hits]
        if k is None:
            have = {h.segment.id for h in hits}
            (spread,) = self.memory.cover(query, show, time_range=time_range, streams=streams)
            found += [(h.segment, h.score) for h in spread if h.segment.id not in have]
        return found

    def ask(
        self,
        question: str,
        k: int | None = None,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
        *,
        max_visual_tokens: int | None = None,
        remember: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer ``question`` from the memory (see the class and module docstrings).

        k: at most this many retrieved segments (default: the instance's); max_visual_tokens:
        this question's video budget (default: the instance's).
        """
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty; ask something about the video")
        k = k or self.k
        budget = max_visual_tokens or self.max_visual_tokens
        if budget < 1:
            raise ConfigError("max_visual_tokens must be >= 1")
        t0 = time.perf_counter()
        now = self.memory.end_time(streams)
        if time_range is None:
            time_range = parse_time_range(question, now)
        found = self.retrieve(question, k, time_range, streams, budget=budget)
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
        opened: list[CompressedSegment] = []
        if self.live and self.open_segments is not None and _touches_now(time_range, now):
            opened = list(self.open_segments(self._streams(streams) if streams else []))
        retrieve_s = time.perf_counter() - t0
        history = self.history[-self.history_turns :] if self.history_turns else []
        # best first (unscored ones, the newest and the open, first; recency-only: newest first)
        live.sort(key=lambda p: (-(p[1] if p[1] is not None else float("inf")), -p[0].end))
        shown = None
        while live or opened:
            try:
                shown = self._budgeted(live, opened, budget)
                break
            except SegmentEvictedError as err:  # a concurrent ingest evicted some since retrieval
                gone = set(err.segment_ids)
                if not gone & {s.id for s, _ in live}:
                    raise
                evicted = sorted(
                    {*evicted, *(replace(_used(s, score), evicted=True) for s, score in live if s.id in gone)},
                    key=lambda u: u.start,
                )
                live = [p for p in live if p[0].id not in gone]
        answer = Answer(question=question, text="", evicted=evicted, time_range=time_range, max_visual_tokens=budget)
        if shown is None:
            answer.text = self._nothing(time_range, evicted)
            answer.timings = {
                "retrieve": retrieve_s,
                "plan": 0.0,
                "fetch": 0.0,
                "remerge": 0.0,
                "assemble": 0.0,
                "prefill": 0.0,
                "decode": 0.0,
                "total": time.perf_counter() - t0,
            }
            return answer
        segments, used, budget_s = shown
        limit = self.max_prefill_tokens
        while limit is not None and len(segments) > 1:  # best first: drop the weakest until it fits
            if self.llm.prefill_length(question, segments, history=history) <= limit:
                break
            segments, used = segments[:-1], used[:-1]
        prefill = self.llm.build_prefill(question, segments, max_prefill_tokens=limit, history=history)
        generation = self.llm.generate(prefill, max_new_tokens=self.max_new_tokens, on_text=on_text)
        answer.text = generation.text.strip()
        answer.segments = sorted(used, key=lambda u: (u.start, u.stream))
        answer.prompt_tokens = prefill.length
        answer.visual_tokens = self.llm.visual_block_length(segments)
        answer.saliency_source, answer.position_layout = prefill.saliency_source, prefill.position_layout
        answer.timings = {
            "retrieve": retrieve_s,
            **budget_s,
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

    def _budgeted(
        self, live: list[tuple[SegmentInfo, float | None]], opened: list[CompressedSegment], budget: int
    ) -> tuple[list[CompressedSegment], list[UsedSegment], dict[str, float]]:
        """The segments to show (best first), re-merged to the plan of :func:`plan_visual_budget`,
        and the seconds of the plan, the fetch from the memory and the re-merge."""
        t0 = time.perf_counter()
        n_open = len(opened)
        stored = [s.budget for s in opened] + [s.tokens for s, _ in live]
        frames = [s.frame_count for s in opened] + [s.frame_count for s, _ in live]
        starts = [s.start_time for s in opened] + [s.start for s, _ in live]
        # relevance: open and unscored first, then by score (recency-only: by rank, newest first)
        relevance = [math.inf] * n_open
        for rank, (_, score) in enumerate(live):
            if self.embedder.recency_only:
                relevance.append(float(len(live) - rank))  # newest first
            else:
                relevance.append(math.inf if score is None else float(score))  # unscored: a stream's newest
        base = self.llm.visual_block_length([])

        def overhead(chosen: Sequence[int]) -> int:
            return self.llm.visual_block_length([_Slot(starts[i], 0) for i in chosen])

        plan = plan_visual_budget(stored, relevance, frames, starts, overhead, budget)
        if not plan:
            raise BudgetError(
                f"max_visual_tokens = {budget} cannot hold one segment ({base} tokens of markers alone); "
                "raise max_visual_tokens"
            )
        chosen = sorted(plan, key=lambda i: (-relevance[i], i))  # best first
        stored_ids = [live[i - n_open][0].id for i in chosen if i >= n_open]
        t1 = time.perf_counter()
        fetched = dict(zip(stored_ids, self.memory.get(stored_ids)))
        t2 = time.perf_counter()
        segments: list[CompressedSegment] = []
        used: list[UsedSegment] = []
        for i in chosen:
            if i < n_open:
                seg = opened[i]
                info_used = UsedSegment(
                    -1, seg.stream_id, seg.start_time, seg.end_time, None, False, plan[i], seg.budget, True
                )
            else:
                info, score = live[i - n_open]
                seg = fetched[info.id]
                info_used = _used(info, score, plan[i])
            segments.append(seg)
            used.append(info_used)
        shown = remerge_many(segments, [plan[i] for i in chosen])
        return shown, used, {"plan": t1 - t0, "fetch": t2 - t1, "remerge": time.perf_counter() - t2}

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


def _touches_now(time_range: tuple[float, float] | None, now: float | None) -> bool:
    """Whether a question's time range reaches the newest stored time (no range: it does)."""
    return time_range is None or now is None or time_range[1] >= now
