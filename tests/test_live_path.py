"""The live write path: incremental compression equals the batch compressor, DySeg on encoder
features, the open segment in a live answer, the question-time token budget."""

import numpy as np
import pytest
import torch
from conftest import moving_object_clip

from streamvid import create_compressor
from streamvid.compress.dyseg import CutRule, streaming_boundaries
from streamvid.compress.incremental import IncrementalSegment
from streamvid.ingest.segmenter import EncoderSegmenter, StreamingSegmenter, frame_features
from streamvid.types import TokenGrid


def _grid(tokens: torch.Tensor, saliency: bool) -> TokenGrid:
    t = tokens.shape[0]
    sal = torch.rand(tokens.shape[:3], generator=torch.Generator().manual_seed(1)) if saliency else None
    return TokenGrid(tokens=tokens, timestamps=torch.arange(t, dtype=torch.float64) * 0.5, saliency=sal)


def _same(a, b) -> None:
    assert a.tokens.shape == b.tokens.shape
    assert torch.allclose(a.tokens.float(), b.tokens.float(), atol=1e-5)
    assert torch.equal(a.sizes, b.sizes) and torch.equal(a.positions, b.positions)
    assert torch.equal(a.owner, b.owner) and torch.equal(a.times, b.times)
    assert torch.equal(a.sizes, torch.bincount(a.owner, minlength=a.budget))
    assert (a.start_time, a.end_time, a.frame_count) == (b.start_time, b.end_time, b.frame_count)
    assert a.richness == pytest.approx(b.richness, abs=1e-5) and a.uniqueness == pytest.approx(b.uniqueness, abs=1e-6)


@pytest.mark.parametrize("name", ["infomerge", "fastvid", "uniform"])
@pytest.mark.parametrize("saliency", [False, True])
def test_incremental_equals_batch_on_the_same_frames_and_boundaries(name, saliency):
    tokens, _ = moving_object_clip(frames=11, h=6, w=6, dim=16)
    grid = _grid(tokens, saliency)
    boundaries = [0, 1, 5, 11]  # a one-frame segment, then two longer ones
    comp = create_compressor(name, ratio=0.25)
    state = IncrementalSegment(comp)
    for k, (a, b) in enumerate(zip(boundaries, boundaries[1:])):
        part = grid.slice(a, b, segment_index=k)
        (batch,) = comp.compress(part, boundaries=[0, b - a])
        for lo in range(0, b - a, 3):  # micro-batches of up to 3 frames
            state.add(part.slice(lo, min(lo + 3, b - a)))
        assert state.num_frames == b - a
        _same(state.peek(k), batch)  # peeking leaves the segment open
        _same(state.close(k), batch)
        assert state.num_frames == 0


def _scene_encoder(scenes: torch.Tensor, calls: list[int]):
    """A fake tower: the scene id in pixel (0, 0) picks a [h, w, D] token map (+ a per-frame wobble)."""

    def encode(frames: torch.Tensor, times: torch.Tensor) -> TokenGrid:
        calls.append(frames.shape[0])
        ids = frames[:, 0, 0, 0].long()  # (b,)
        wobble = 0.01 * torch.sin(times.float())[:, None, None, None]
        return TokenGrid(tokens=scenes[ids] + wobble, timestamps=times)

    return encode


def _planted(length: int, changes: list[int]) -> tuple[list, torch.Tensor]:
    """Frames that all look alike in pixels (only pixel (0, 0) carries the scene id)."""
    frames, scene = [], 0
    for f in range(length):
        scene += f in changes
        img = np.full((16, 16, 3), 128, dtype=np.uint8)
        img[0, 0] = scene
        frames.append((0.5 * f, img))
    return frames, torch.randn(len(changes) + 1, 3, 3, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("micro_batch", [1, 3, 8])
def test_dyseg_cuts_on_encoder_features_at_planted_scene_changes(micro_batch):
    frames, scenes = _planted(30, [5, 12, 13])
    calls: list[int] = []
    comp = create_compressor("infomerge", ratio=0.3)
    seg = EncoderSegmenter(_scene_encoder(scenes, calls), comp, 0.9, 2, 8, micro_batch=micro_batch)
    closed = []
    for t, img in frames:
        closed += seg.push(t, img)
    closed += seg.flush()
    starts = [round(float(s.timestamps[0]) / 0.5) for s in closed]
    # scene changes at 5 and 12 cut; 13 comes one frame after a cut (min_len 2); max_len 8 cuts 20 and 28
    assert starts == [0, 5, 12, 20, 28]
    assert all(s.compressed is not None and s.compressed.segment_index == i for i, s in enumerate(closed))
    assert max(calls) <= micro_batch and sum(calls) == 30  # every frame encoded once, in micro-batches
    # the pixel rule sees no change at all: the thumbnail segmenter cuts only at max_len
    thumbs = StreamingSegmenter(0.9, 2, 8)
    pixel = [s for t, img in frames if (s := thumbs.push(t, img)) is not None] + [thumbs.flush()]
    assert [round(float(s.timestamps[0]) / 0.5) for s in pixel] == [0, 8, 16, 24]
    # the same cuts as the batch form of the rule on the encoder's features, and the same tokens
    # as the batch compressor on those boundaries
    times = torch.tensor([t for t, _ in frames], dtype=torch.float64)
    grid = _scene_encoder(scenes, [])(torch.from_numpy(np.stack([img for _, img in frames])), times)
    bounds = streaming_boundaries(frame_features(grid), CutRule(tau_seg=0.9, min_len=2, max_len=8))
    assert bounds[:-1] == starts
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        (batch,) = comp.compress(grid.slice(a, b, segment_index=k), boundaries=[0, b - a])
        _same(closed[k].compressed, batch)


def test_encoder_segmenter_idle_encodes_a_short_batch_and_peek_shows_the_open_segment():
    frames, scenes = _planted(6, [3])
    calls: list[int] = []
    seg = EncoderSegmenter(_scene_encoder(scenes, calls), create_compressor("infomerge", ratio=0.3), micro_batch=8)
    for t, img in frames[:2]:
        assert seg.push(t, img) == []
    assert calls == [] and seg.pending == 2
    assert seg.idle() == [] and calls == [2] and seg.pending == 0  # nothing waits for a full batch
    seg.push(*frames[2])
    opened = seg.peek()  # waiting frames are encoded first
    assert opened is not None and opened.frame_count == 3 and opened.end_time == 1.0
    assert seg.open_length == 3  # peeking leaves the segment open
    (closed,) = seg.push(*frames[3]) + seg.idle()
    _same(closed.compressed, opened)


# -- the question-time token budget -------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from bench.random_models import tiny_llava
    from streamvid.models import load_adapter

    return load_adapter(str(tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu", dtype=torch.float32)


GREEN = {10, 40}  # the segments the question is about


def _store_segments(memory, dim: int, count: int, key_of, seed: int = 1) -> None:
    """``count`` segments of 4 s (4 frames of 2x2 random tokens, uniform 50%: 8 tokens each) on
    stream cam; key_of(i, generator) -> the key of segment i."""
    comp = create_compressor("uniform", ratio=0.5)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        grid = TokenGrid(
            tokens=torch.randn(4, 2, 2, dim, generator=gen),
            timestamps=torch.arange(4, dtype=torch.float64) + 4 * i,
            stream_id="cam",
            segment_index=i,
        )
        (seg,) = comp.compress(grid, boundaries=[0, 4])
        memory.add(seg, key_of(i, gen))


@pytest.fixture(scope="module")
def hour(tmp_path_factory, llm):
    """60 stored segments of 4 s (8 tokens each) on stream cam; keys: green for GREEN, else red/blue."""
    from memory import TokenMemory

    memory = TokenMemory(tmp_path_factory.mktemp("mem"), cap_tokens=100_000)

    def color(i: int, _gen: torch.Generator) -> torch.Tensor:
        key = torch.tensor([0.0, 1.0, 0.0]) if i in GREEN else torch.tensor([1.0, 0.0, 0.2 * (i % 3)])
        return key / key.norm()

    _store_segments(memory, llm.hidden_size, 60, color, seed=0)
    yield memory
    memory.close()


def _check_prompt(llm, answer, budget):
    from agents.qa import _Slot

    slots = [_Slot(u.start, u.tokens) for u in answer.segments]
    assert answer.visual_tokens == llm.visual_block_length(slots) <= budget
    assert answer.prompt_tokens == llm.prefill_length(answer.question, slots)
    assert [u.start for u in answer.segments] == sorted(u.start for u in answer.segments)  # time order
    assert all(1 <= u.tokens <= u.stored_tokens == 8 for u in answer.segments)


def test_budgeted_prompt_never_exceeds_the_budget_and_covers_the_range(llm, hour):
    from agent_helpers import ColorEmbedder

    from agents import VideoQA

    qa = VideoQA(llm, hour, ColorEmbedder(), max_new_tokens=1)
    full = llm.visual_block_length([_slot(i) for i in range(60)])  # every segment at its stored grain
    for budget in (60, 150, 300, full - 40, full, 10 * full):
        answer = qa.ask("When is the screen green?", max_visual_tokens=budget, remember=False)
        _check_prompt(llm, answer, budget)
        shown = {round(u.start) // 4: u for u in answer.segments}
        assert GREEN <= set(shown)
        others = max(u.tokens for i, u in shown.items() if i not in GREEN)
        assert all(shown[i].tokens >= others for i in GREEN)  # the relevant are never coarser than others
        if budget >= 150:
            assert all(shown[i].grain == 1.0 for i in GREEN)  # ... and keep their stored grain
        assert answer.visual_tokens >= 0.9 * min(budget, full)  # the budget is used
        starts = sorted(shown)
        if budget >= full:
            assert len(shown) == 60 and all(u.grain == 1.0 for u in answer.segments)
        else:  # coarse: re-merged segments, spread over the whole hour
            assert any(u.grain < 1.0 for u in answer.segments)
            assert starts[0] * 4 <= 240 / len(starts) and (59 - starts[-1]) * 4 <= 240 / len(starts)
            assert max(b - a for a, b in zip(starts, starts[1:])) <= 2 * 60 / len(starts) + 1
        assert answer.max_visual_tokens == budget
    # the default budget is the documented share of the context
    assert qa.max_visual_tokens == int(0.5 * llm.context_length)
    # k stays an upper bound on the retrieved segments
    two = qa.ask("When is the screen green?", k=2, max_visual_tokens=10 * full, remember=False)
    assert {round(u.start) // 4 for u in two.segments} == GREEN


def test_budget_covers_only_the_asked_range(llm, hour):
    from agents import VideoQA
    from streamvid.embedders import NoEmbedder

    qa = VideoQA(llm, hour, NoEmbedder(), max_new_tokens=1)
    answer = qa.ask("What happened?", time_range=(40.0, 120.0), max_visual_tokens=70, remember=False)
    _check_prompt(llm, answer, 70)
    idx = sorted(round(u.start) // 4 for u in answer.segments)
    assert 10 <= idx[0] <= 15 and idx[-1] == 30 and len(idx) >= 5  # inside the range, spread over it
    assert answer.visual_tokens >= 0.9 * 70


def _slot(i: int):
    from agents.qa import _Slot

    return _Slot(4.0 * i, 8)


def test_plan_visual_budget_reference():
    from agents.qa import plan_visual_budget

    n = 12
    stored = [10] * n
    relevance = [float(i % 5) for i in range(n)]

    def overhead(chosen):  # 3 tokens of time text per segment + 1 closing marker
        return 3 * len(chosen) + 1

    for budget in range(0, 200, 7):
        plan = plan_visual_budget(stored, relevance, [4] * n, [float(i) for i in range(n)], overhead, budget)
        used = overhead(list(plan)) + sum(plan.values()) if plan else 0
        assert used <= budget
        if budget >= 5:
            assert plan and used >= min(budget, overhead(range(n)) + 10 * n) - 4  # nothing left idle
        if plan:
            best = max(plan, key=lambda i: (relevance[i], -i))
            order = sorted(range(n), key=lambda i: (-relevance[i], i))
            assert plan[best] == max(plan.values())  # the most relevant is never coarser than another
            top = int((budget / 2 - 1) // 13)  # the most relevant keep their stored grain in half the budget
            assert [plan.get(i) for i in order[:top]] == [10] * top


# -- the open segment in a live answer ----------------------------------------------------------


def test_open_segment_appears_in_a_live_answer(llm, tmp_path):
    from agent_helpers import ColorEmbedder

    from agents import LiveSession
    from memory import TokenMemory
    from streamvid.ingest.sources import IterableSource

    memory = TokenMemory(tmp_path / "mem", cap_tokens=100_000)
    comp = create_compressor("infomerge", ratio=0.5)
    session = LiveSession(
        {"cam": IterableSource([], live=True)}, llm, memory, ColorEmbedder(), comp,
        max_len=4, micro_batch=2, max_new_tokens=1,
    )  # fmt: skip
    job = session.ingests["cam"]
    img = np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    for f in range(11):  # driven by hand: the consumer thread's calls, without the thread
        for closed in job.pipeline.segmenter.push(0.5 * f, img):
            job.stage(closed)
    assert memory.segment_counts() == (2, 0)  # frames 0-3 and 4-7 stored; 8-10 open
    assert job.pipeline.segmenter.pending == 1  # frame 10 waits for its micro-batch
    answer = session.ask("What is happening right now?")
    (opened,) = [u for u in answer.segments if u.open]
    assert (opened.id, opened.stream, opened.start, opened.end) == (-1, "cam", 4.0, 5.0)  # the waiting frame too
    assert opened.tokens == opened.stored_tokens > 0  # shown at the stream's ratio
    assert answer.segments[-1] == opened and any(u.start == 2.0 for u in answer.segments)  # after the newest stored
    # what the model saw: the stored segments and the open one compressed at the compressor's ratio
    frames = torch.from_numpy(np.stack([img] * 3))
    grid = llm.encode(frames, torch.tensor([4.0, 4.5, 5.0], dtype=torch.float64))
    (batch,) = comp.compress(grid, boundaries=[0, 3])
    assert opened.tokens == batch.budget
    # a question about the past does not look at "now"
    past = session.ask("What happened between 0:00 and 0:01?")
    assert not any(u.open for u in past.segments)
    # the open segment is still open and is stored, unchanged in its range, when the stream ends
    (last,) = job.pipeline.segmenter.flush()
    assert (last.start_time, last.end_time, last.compressed.segment_index) == (4.0, 5.0, 2)
    session.stop()
    assert session.encoder.batches == session.encoder.frames // 2 + 1  # the shared encoder ran every batch
    memory.close()


# -- the shared encoder ----------------------------------------------------------------------------


class _GatedTower:
    """A fake Video-LLM tower: tokens from the frames' pixels; the first call waits for ``gate``."""

    def __init__(self):
        import threading
        from types import SimpleNamespace

        self.capabilities = SimpleNamespace(frames_per_token_step=1)
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def encode(self, frames, times, attention_scores=None):
        if not self.calls:
            self.entered.set()
            self.gate.wait(30)
        self.calls.append(frames.shape[0])
        tokens = frames[:, :2, :2].float()  # (b, 2, 2, 3)
        return TokenGrid(tokens=tokens, timestamps=times.double())


def test_shared_encoder_batches_streams_and_returns_each_its_own_frames():
    import threading

    from agents.ingest import EncoderWorker

    tower = _GatedTower()
    worker = EncoderWorker(tower, max_batch=8)
    results: dict[str, TokenGrid] = {}

    def submit(name: str, value: int, count: int):
        frames = torch.full((count, 4, 4, 3), value, dtype=torch.uint8)
        results[name] = worker.encode(name, frames, torch.arange(count, dtype=torch.float64) + value)

    first = threading.Thread(target=submit, args=("a", 1, 2))
    first.start()
    assert tower.entered.wait(30)  # the worker holds a's request in the gated call
    others = [threading.Thread(target=submit, args=(n, v, 3)) for n, v in (("b", 2), ("c", 3), ("d", 4))]
    for t in others:
        t.start()
    pause = threading.Event()
    while sum(len(q) for q in worker._queues.values()) < 3:  # b, c and d are waiting
        pause.wait(0.001)
    tower.gate.set()
    for t in [first, *others]:
        t.join(10)
    worker.close()
    # a alone, then b, c, d round-robin until max_batch: b + c (6 frames; d's 3 would make 9), then d
    assert tower.calls == [2, 6, 3] and worker.batches == 3 and worker.frames == 11
    for name, value, count in (("a", 1, 2), ("b", 2, 3), ("c", 3, 3), ("d", 4, 3)):
        grid = results[name]
        assert grid.num_frames == count and bool((grid.tokens == value).all())
        assert torch.equal(grid.timestamps, torch.arange(count, dtype=torch.float64) + value)
    assert not worker._thread.is_alive()


def test_candidates_are_what_the_budget_can_show_top_and_spread_over_the_time(llm, hour):
    """With k None a question draws the top segments a budget could show plus as many spread
    evenly over the asked time (TokenMemory.cover), never the whole memory."""
    from agent_helpers import ColorEmbedder

    from agents import VideoQA

    qa = VideoQA(llm, hour, ColorEmbedder(), max_new_tokens=1)
    show = qa.showable(40)
    assert 1 < show < 30
    found = qa.retrieve("When is the screen green?", None, None, None, budget=40)
    ids = [s.id for s, _ in found]
    assert len(ids) == len(set(ids)) <= 2 * show
    assert GREEN <= {round(s.start) // 4 for s, _ in found[:show]}  # the top ones first
    query = ColorEmbedder().embed_text(["When is the screen green?"])
    (spread,) = hour.cover(query, show)
    starts = [h.segment.start for h in spread]
    assert len(spread) == show and starts == sorted(starts)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) - min(gaps) <= 4.0 and starts[0] < 240 / show  # even over the hour
    (scored,) = hour.search(query, k=60)
    exact = {h.segment.id: h.score for h in scored}
    assert all(h.score == pytest.approx(exact[h.segment.id], abs=1e-6) for h in spread)  # real scores
    (inside,) = hour.cover(query, 100, time_range=(40.0, 120.0))
    assert all(h.segment.end >= 40.0 and h.segment.start <= 120.0 for h in inside) and len(inside) == 21


def test_a_segment_evicted_between_retrieval_and_reading_is_reported_not_raised(llm, tmp_path):
    """An ingest may evict segments after a question retrieved them: the answer shows the rest
    and names the evicted ones, never a SegmentEvictedError."""
    from agent_helpers import ColorEmbedder

    from agents import VideoQA
    from memory import TokenMemory

    memory = TokenMemory(tmp_path / "m", cap_tokens=10_000)
    _store_segments(
        memory, llm.hidden_size, 20, lambda _i, gen: torch.nn.functional.normalize(torch.randn(3, generator=gen), dim=0)
    )
    real_get, calls = memory.get, []

    def racing_get(ids, device=None):
        if not calls:
            memory.set_cap(cap_tokens=6)  # the concurrent ingest: most segments evicted now
        calls.append(list(ids))
        return real_get(ids, device)

    memory.get = racing_get
    qa = VideoQA(llm, memory, ColorEmbedder(), max_new_tokens=1)
    answer = qa.ask("When is the screen green?", max_visual_tokens=400, remember=False)
    live = {s.id for s in memory.timeline("cam") if not s.evicted}
    assert len(calls) == 2 and len(live) < 20
    assert answer.segments and {u.id for u in answer.segments} <= live
    assert {u.id for u in answer.evicted} >= set(calls[0]) - live
    assert "evicted" in answer.text
    memory.close()
