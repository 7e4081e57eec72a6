"""The live path, measured in one run: frame-to-searchable latency on a loopback stream, encoder
batching across streams, time to first token against memory length under one prompt budget
(beside the offline pipeline for the same question), budget use and needle recall.

- latency: a sender subprocess serves an MPEG-TS stream on ``tcp://127.0.0.1`` in real time,
  each frame's index drawn as a 16-bit barcode into its pixels and its send time (wall clock,
  after the mux) printed; a :class:`~agents.live.LiveSession` ingests it through a
  ``NetworkSource``. A frame's latency is the wall time from its send (matched by the barcode)
  to the moment its segment is stored (``on_segment``: searchable), p50 / p95, and the same
  from its arrival (out of the decoder) to searchable, the issue's definition; the difference
  is the wire, the demuxer (an MPEG-TS video packet leaves the demuxer when the next one
  starts) and the decoder's frame threads. Frames of the first ``warmup_s`` (connection and
  probing) and of the segment open at the stop are not counted. Target on the tiny model:
  p95 <= max_len / fps + 200 ms. The SigLIP-so400m-shaped tower (random weights, bfloat16) takes
  seconds per frame on a CPU, so it gets a sparse sample rate and two-frame segments, and no
  target.
- batching: 1, 2, 4 streams encoding micro-batches through one shared ``EncoderWorker`` vs the
  same streams encoding one after another alone; frames per second, after warm-up, alone and
  shared runs interleaved (order alternating) so the machine's load hits both.
- questions: memories of 1 min, 1 h, 10 h of 1 fps video (16-frame segments of 14 x 14 tokens)
  under a cap of 1% of the raw tokens. Building 10 h by adding 15% segments one by one and
  letting the cap re-merge them takes long on a CPU, so the segments are added already at the
  steady-state grain (cap / segments tokens each; the cap is then met without re-merging).
  Time to first token (one generated token: retrieve + plan + fetch + re-merge + assemble +
  prefill) at two budgets: one every memory can fill (the headline ratio 10 h / 1 min), and
  1024, where the 1-minute memory holds far less than the budget (its budget use says so). In
  the same rounds, the offline pipeline for the same question: decode 32 frames of a 1-minute
  clip + encode + compress + prefill, with the same model. The tiny LM's prefill takes a few
  milliseconds, so its ratio is mostly the memory's own overhead (plan, fetch, re-merge); the
  same questions are then asked of a Qwen2-0.5B-shaped LM (random weights, the smallest LM of
  the supported Video-LLMs), whose prefill is what a user of a real model waits for, at the
  first budget, with every torch thread.
- budget use: the video block's tokens / max_visual_tokens; needle recall: a 1 h stream of
  alike segments with planted needles whose keys match the question, the question's time range
  covering them all: the share of needles in the budgeted prompt vs in a k = 4 prompt.
"""

from __future__ import annotations

import math
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.ingest import EncoderWorker
from agents.live import LiveSession
from agents.qa import VideoQA
from bench.memory_speed import KEY_DIM, synthetic_segment, unit_keys
from bench.parts import Part
from bench.random_models import build_llava_with_lm, make_tokenizer, tiny_llava
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import NoEmbedder
from streamvid.errors import SourceError
from streamvid.ingest.sampler import Sampler
from streamvid.ingest.sources import NetworkSource, read_frames
from streamvid.models import load_adapter

__all__ = [
    "PART",
    "markdown",
    "measure_batching",
    "measure_latency",
    "measure_needles",
    "measure_questions",
    "ratios",
    "run_live_latency",
    "shaped_llava",
    "summary",
]

WIDTH, HEIGHT = 128, 96
BITS = 16  # frame index barcode: two rows of 8 blocks of 16 x 16 pixels at the top of the frame
SEG_FRAMES, PER_FRAME = 16, 196  # the question memories: 16-frame segments of 14 x 14 tokens at 1 fps

# The sender: an MPEG-TS stream served in real time; prints "index send-time" after each frame.
SENDER = r"""
import sys, time
from fractions import Fraction
import av, numpy as np
port, fps, count = int(sys.argv[1]), Fraction(sys.argv[2]), int(sys.argv[3])
W, H, BITS = (int(x) for x in sys.argv[4:7])

def picture(i):
    scene = i // max(1, int(4 * fps))  # a new scene every 4 s
    rng = np.random.default_rng(1000 + scene)
    img = np.kron(rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    for b in range(BITS):
        y, x = 16 * (b // 8), 16 * (b % 8)
        img[y : y + 16, x : x + 16] = 255 if (i >> b) & 1 else 0
    return img

print("listening", flush=True)
with av.open(f"tcp://127.0.0.1:{port}?listen=1", "w", format="mpegts", options={"flush_packets": "1"}) as out:
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.bit_rate = 4_000_000
    start = time.monotonic()
    for i in range(count):
        wait = start + float(i / fps) - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # real-time pacing of a live feed
        frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
        print(i, repr(time.time()), flush=True)
    for packet in stream.encode(None):
        out.mux(packet)
"""


def read_barcode(img: np.ndarray) -> int:
    """The frame index the sender drew (the centre of each block, thresholded)."""
    value = 0
    for b in range(BITS):
        y, x = 16 * (b // 8), 16 * (b % 8)
        if float(img[y + 4 : y + 12, x + 4 : x + 12].mean()) > 127:
            value |= 1 << b
    return value


class _StampedSource(NetworkSource):
    """A NetworkSource that notes, for each frame the ingest's sampler will keep, the sender's
    index (barcode) and the wall time it left the decoder. Measurement only: frames pass unchanged."""

    def __init__(self, url: str, sample_fps: float, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.sample_fps = sample_fps
        self.arrived: dict[float, tuple[int, float]] = {}  # source time -> (sender index, arrival)
        self.connections = 0  # connections that delivered frames

    def frames(self):  # type: ignore[override]
        sampler = Sampler(fps=self.sample_fps, max_size=None)  # the pipeline's rule: same frames kept
        first = True
        for frame in super().frames():
            if first:
                self.connections += 1
                first = False
            if self.connections == 1 and sampler.accept(frame.time):
                self.arrived[round(frame.time, 6)] = (read_barcode(frame.rgb()), time.time())
            yield frame


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _start_sender(root: Path, port: int, fps: Fraction, count: int) -> tuple[subprocess.Popen, dict[int, float]]:
    script = root / "live_sender.py"
    script.write_text(SENDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(fps), str(count), str(WIDTH), str(HEIGHT), str(BITS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    sent: dict[int, float] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        proc.stdout.readline()
        ready.set()
        for line in proc.stdout:
            i, t = line.split()
            sent[int(i)] = float(t)

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        raise SourceError("the loopback stream sender did not start within 60 s; check that PyAV can encode mpeg4")
    return proc, sent


def measure_latency(
    llm: Any,
    root: Path,
    *,
    fps: float,
    seconds: float,
    max_len: int,
    sample_fps: float | None = None,
    warmup_s: float = 2.0,
    micro_batch: int = 8,
    ratio: float = 0.15,
) -> dict[str, Any]:
    """Send -> searchable and arrival -> searchable on a live loopback MPEG-TS stream (see the module
    docstring). ``fps``: the sender's rate; ``sample_fps``: the ingest's (default: every frame)."""
    sample_fps = sample_fps or fps
    rate = Fraction(fps).limit_denominator(1000)
    count = int(seconds * fps)
    port = _free_port()
    root.mkdir(parents=True, exist_ok=True)
    memory = TokenMemory(root / "memory", cap_tokens=10_000_000)
    source = _StampedSource(f"tcp://127.0.0.1:{port}", sample_fps, open_timeout=10.0, read_timeout=10.0)
    stored_at: dict[int, float] = {}
    stored = threading.Event()

    def on_segment(_stream: str, sid: int) -> None:
        stored_at[sid] = time.time()
        stored.set()

    llm.encode(np.zeros((1, HEIGHT, WIDTH, 3), np.uint8), np.zeros(1))  # first-call costs out of the stream
    interval = 1.0 / sample_fps
    tail = (max_len + 1) * interval + 1.0  # the last counted segments close while the stream still flows

    def counted(i: int) -> bool:
        return warmup_s <= i / fps < seconds - tail

    proc, sent = _start_sender(root, port, rate, count)
    try:
        session = LiveSession(
            {"cam": source},
            llm,
            memory,
            NoEmbedder(),
            create_compressor("infomerge", ratio=ratio),
            fps=sample_fps,
            max_len=max_len,
            micro_batch=micro_batch,
            on_segment=on_segment,
        )
        session.start()
        try:
            deadline = time.monotonic() + seconds + 60.0 + 4 * max_len * interval
            while time.monotonic() < deadline:
                stored.wait(0.5)
                stored.clear()
                if proc.poll() is None:
                    continue  # the stream is still being sent
                last = max((t for t, (i, _) in list(source.arrived.items()) if counted(i)), default=None)
                newest = memory.newest("cam")
                if last is None or (newest is not None and newest.end >= last - 1e-6):
                    break  # every counted frame is stored
        finally:
            status = session.stop()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    frames = sorted(source.arrived.items())
    send_lat, arrive_lat, wire = [], [], []
    segments = []
    for info in memory.timeline("cam"):
        if info.id not in stored_at:
            continue
        members = [(t, i, a) for t, (i, a) in frames if info.start - 1e-6 <= t <= info.end + 1e-6]
        kept = [(i, a) for _, i, a in members if i in sent and counted(i)]
        if kept:
            segments.append(len(members))
        for i, a in kept:
            send_lat.append(stored_at[info.id] - sent[i])
            arrive_lat.append(stored_at[info.id] - a)
            wire.append(a - sent[i])
    memory.close()
    stream = status.streams[0]
    return {
        "fps": fps,
        "sample_fps": sample_fps,
        "max_len": max_len,
        "seconds": seconds,
        "frames": len(send_lat),
        "segments": len(segments),
        "mean_segment_frames": statistics.mean(segments) if segments else float("nan"),
        "send_p50_s": _pct(send_lat, 50),
        "send_p95_s": _pct(send_lat, 95),
        "arrival_p50_s": _pct(arrive_lat, 50),
        "arrival_p95_s": _pct(arrive_lat, 95),
        "wire_p50_s": _pct(wire, 50),
        "target_p95_s": max_len / sample_fps + 0.2,
        "dropped": stream.dropped,
        "connections": source.connections,
        "error": stream.error,
    }


def shaped_llava(dtype: torch.dtype = torch.bfloat16) -> Any:
    """A LLaVA-OneVision adapter with a SigLIP-so400m/14 @ 384 vision tower (27 layers, 1152 wide)
    and the tiny test LM, random weights: the tower costs what the real one costs."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from streamvid.models.llava_onevision import LlavaOneVision

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            vision_use_head=False,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval().to(dtype)
    return LlavaOneVision(model, tok, {}, saliency_head=None)


def _clips(streams: int, frames: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.from_numpy(rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), dtype=np.uint8)) for _ in range(streams)]


def _feed(worker: EncoderWorker, stream: str, clip: torch.Tensor, micro_batch: int) -> None:
    times = torch.arange(clip.shape[0], dtype=torch.float64)
    for a in range(0, clip.shape[0], micro_batch):
        worker.encode(stream, clip[a : a + micro_batch], times[a : a + micro_batch])


def _alone(llm: Any, clips: list[torch.Tensor], micro_batch: int) -> float:
    """Seconds for the streams to encode their micro-batches one stream after another."""
    t0 = time.perf_counter()
    for clip in clips:
        times = torch.arange(clip.shape[0], dtype=torch.float64)
        for a in range(0, clip.shape[0], micro_batch):
            llm.encode(clip[a : a + micro_batch], times[a : a + micro_batch])
    return time.perf_counter() - t0


def _shared(worker: EncoderWorker, clips: list[torch.Tensor], micro_batch: int) -> float:
    """Seconds for the streams, each in its own thread, to encode through one worker."""
    threads = [threading.Thread(target=_feed, args=(worker, f"s{s}", c, micro_batch)) for s, c in enumerate(clips)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` torch intra-op threads (None: as set), restored after.

    The tiny model's operations are small; on a shared, busy CPU a second intra-op thread waits
    for a free core, which makes them ~10x slower and their times noise (measured here: a 1-minute
    question at 128 tokens 10 ms with one thread, 110 ms with two). The shaped tower keeps both."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def measure_batching(
    llm: Any,
    *,
    frames_per_stream: int,
    micro_batch: int,
    repeats: int = 1,
    streams: tuple[int, ...] = (1, 2, 4),
    warm_shared: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Frames per second with 1, 2, 4 streams: one shared EncoderWorker vs each stream alone.

    Warm-up first: one alone micro-batch, and (``warm_shared``) one shared round of each stream
    count, so no first-call cost is inside a timing; without it (a slow tower) any first cost of
    the larger batch lands on the shared side, which understates the gain. Alone and shared runs
    alternate (ABBA) ``repeats`` times; medians. The worker takes the first request alone (it
    does not wait for others), so with few micro-batches per stream the start dominates:
    ``tower_calls`` shows how many calls the shared runs made."""
    with _torch_threads(threads) as used:
        return {**_batching(llm, frames_per_stream, micro_batch, repeats, streams, warm_shared), "torch_threads": used}


def _batching(
    llm: Any, frames_per_stream: int, micro_batch: int, repeats: int, streams: tuple[int, ...], warm_shared: bool
) -> dict[str, Any]:
    warm = _clips(1, micro_batch)[0]
    llm.encode(warm, torch.arange(micro_batch, dtype=torch.float64))
    rows = []
    for n in streams:
        clips = _clips(n, frames_per_stream)
        worker = EncoderWorker(llm, max_batch=micro_batch * n)
        if warm_shared:
            _shared(worker, [c[:micro_batch] for c in clips], micro_batch)
        calls0 = worker.batches
        alone, shared = [], []
        for r in range(repeats):
            if r % 2 == 0:
                alone.append(_alone(llm, clips, micro_batch))
                shared.append(_shared(worker, clips, micro_batch))
            else:
                shared.append(_shared(worker, clips, micro_batch))
                alone.append(_alone(llm, clips, micro_batch))
        calls = (worker.batches - calls0) / repeats
        worker.close()
        frames = n * frames_per_stream
        a, s = statistics.median(alone), statistics.median(shared)
        rows.append(
            {
                "streams": n,
                "alone_fps": frames / a,
                "shared_fps": frames / s,
                "gain": a / s,
                "tower_calls": calls,
                "alone_calls": n * math.ceil(frames_per_stream / micro_batch),
            }
        )
    return {"micro_batch": micro_batch, "frames_per_stream": frames_per_stream, "repeats": repeats, "rows": rows}


class _KeyEmbedder:
    """Questions drawn from the stored keys' distribution (a fresh key per question)."""

    dim = KEY_DIM
    recency_only = False

    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)

    def embed_frames(self, frames: Any) -> torch.Tensor:
        raise NotImplementedError("keys are made by the benchmark")

    def embed_text(self, texts: Any) -> torch.Tensor:
        return torch.from_numpy(unit_keys(len(texts), int(self.rng.integers(1 << 30))))


class _FixedEmbedder(_KeyEmbedder):
    """Every question embeds to one key (the needles' direction)."""

    def __init__(self, key: np.ndarray) -> None:
        self.key = key.astype(np.float32)

    def embed_text(self, texts: Any) -> torch.Tensor:
        return torch.from_numpy(np.tile(self.key, (len(texts), 1)))


def steady_memory(
    root: Path, seconds: float, dim: int, keys: np.ndarray | None = None, cap_fraction: float = 0.01
) -> tuple[TokenMemory, int]:
    """A memory of ``seconds`` of 1 fps video under a cap of ``cap_fraction`` of the raw tokens, its
    segments added at the steady-state grain (cap / segments tokens each). -> (memory, grain)."""
    segments = max(1, int(seconds) // SEG_FRAMES)
    cap = max(segments, int(cap_fraction * seconds * PER_FRAME))
    grain = cap // segments
    keys = unit_keys(segments, seed=3) if keys is None else keys
    memory = TokenMemory(root, cap_tokens=cap)
    for a in range(0, segments, 500):
        b = min(segments, a + 500)
        memory.add_many([synthetic_segment(i, grain, SEG_FRAMES, dim) for i in range(a, b)], keys[a:b])
    return memory, grain


def _ttft(answer: Any) -> dict[str, float]:
    """Time to first token of a one-token answer and its parts (seconds)."""
    t = answer.timings
    total = t["total"]
    return {
        "ttft": total,
        "retrieve": t["retrieve"],
        "plan": t["plan"],  # the budget plan
        "fetch": t["fetch"],  # the shown segments from the memory
        "remerge": t["remerge"],
        "assemble": t["assemble"],
        "prefill": t["prefill"],
    }


def _write_clip(path: Path, seconds: float = 60.0, fps: int = 4) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        rng = np.random.default_rng(7)
        for i in range(int(seconds * fps)):
            if i % (4 * fps) == 0:
                blocks = rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
                img = np.kron(blocks, np.ones((16, 16, 1), np.uint8))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _offline(llm: Any, clip: Path, compressor: Any, question: str, frames: int) -> dict[str, float]:
    """decode ``frames`` frames of the clip + encode + compress + prefill (to the first token)."""
    t0 = time.perf_counter()
    pixels, times = read_frames(clip, frames)
    t1 = time.perf_counter()
    grid = llm.encode(pixels, times)
    t2 = time.perf_counter()
    segments = compressor.compress(grid)
    t3 = time.perf_counter()
    prefill = llm.build_prefill(question, segments)
    generation = llm.generate(prefill, max_new_tokens=1)
    t4 = time.perf_counter()
    return {
        "ttft": t4 - t0,
        "decode": t1 - t0,
        "encode": t2 - t1,
        "compress": t3 - t2,
        "prefill": t4 - t3,
        "prompt_tokens": float(generation.prompt_tokens),
    }


def measure_questions(llm: Any, root: Path, *, threads: int | None = 1, **sizes: Any) -> dict[str, Any]:
    """Time to first token over memories of each length at each budget, and the offline pipeline
    (see :func:`_questions` for the sizes), with ``threads`` torch threads (see :func:`_torch_threads`)."""
    with _torch_threads(threads) as used:
        return {**_questions(llm, root, **sizes), "torch_threads": used}


def _questions(
    llm: Any,
    root: Path,
    *,
    lengths_s: tuple[float, ...] = (60.0, 3600.0, 36000.0),
    budgets: tuple[int, ...] = (128, 1024),
    questions: int = 5,
    offline_frames: int = 32,
    offline_clip_s: float = 60.0,
    ratio: float = 0.15,
) -> dict[str, Any]:
    """Every memory, budget and the offline run once per round, ``questions`` rounds; medians."""
    memories = {}
    for seconds in lengths_s:
        t0 = time.perf_counter()
        memory, grain = steady_memory(root / f"q{int(seconds)}", seconds, llm.hidden_size)
        memories[seconds] = (memory, grain, time.perf_counter() - t0)
    clip = _write_clip(root / "offline.mp4", offline_clip_s)
    compressor = create_compressor("infomerge", ratio=ratio)
    question = "What happened?"
    qas = {
        s: VideoQA(llm, m, _KeyEmbedder(), max_new_tokens=1, history_turns=0, max_visual_tokens=max(budgets))
        for s, (m, _, _) in memories.items()
    }
    for qa in qas.values():  # warm-up: every (memory, budget) and the offline path once
        for b in budgets:
            qa.ask(question, remember=False, max_visual_tokens=b)
    _offline(llm, clip, compressor, question, offline_frames)
    runs: dict[tuple[float, int], list[Any]] = {(s, b): [] for s in lengths_s for b in budgets}
    offline = []
    for _ in range(questions):
        for s, qa in qas.items():
            for b in budgets:
                runs[(s, b)].append(qa.ask(question, remember=False, max_visual_tokens=b))
        offline.append(_offline(llm, clip, compressor, question, offline_frames))
    tables = []
    for b in budgets:
        rows = []
        for s in lengths_s:
            memory, grain, build_s = memories[s]
            answers = runs[(s, b)]
            parts = [_ttft(a) for a in answers]
            med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
            held = memory.tokens_held
            rows.append(
                {
                    "seconds": s,
                    "segments": memory.segment_counts()[0],
                    "grain": grain,
                    "tokens_held": held,
                    "build_s": build_s,
                    **{f"{k}_s": v for k, v in med.items()},
                    "budget_use": statistics.median(a.visual_tokens / b for a in answers),
                    "token_use": statistics.median(sum(u.tokens for u in a.segments) / b for a in answers),
                    "segments_shown": statistics.median(len(a.segments) for a in answers),
                    "prompt_tokens": statistics.median(a.prompt_tokens for a in answers),
                    "holds_more": held > b,
                }
            )
        tables.append(
            {"max_visual_tokens": b, "rows": rows, "ratio_longest_shortest": rows[-1]["ttft_s"] / rows[0]["ttft_s"]}
        )
    for memory, _, _ in memories.values():
        memory.close()
    off = {k: statistics.median(o[k] for o in offline) for k in offline[0]}
    return {
        "lengths_s": list(lengths_s),
        "questions": questions,
        "budgets": tables,
        "offline": {"frames": offline_frames, "clip_s": offline_clip_s, **off},
    }


def measure_needles(
    llm: Any,
    root: Path,
    *,
    seconds: float = 3600.0,
    needles: int = 10,
    budgets: tuple[int, ...] = (128, 1024),
    k: int = 4,
    noise: float = 0.11,
) -> dict[str, Any]:
    """Needle recall of the budgeted prompt vs a k = 4 prompt on a synthetic needle stream.

    The stream: ``seconds`` of alike segments (keys around 64 shared centres) with ``needles``
    segments spread over it whose keys are the question's key plus noise (cosine ~0.3 to it,
    the others ~0). The question's time range covers every needle. Recall: the share of
    needles whose segment is in the prompt."""
    segments = max(1, int(seconds) // SEG_FRAMES)
    rng = np.random.default_rng(21)
    question = rng.normal(size=KEY_DIM)
    question /= np.linalg.norm(question)
    keys = unit_keys(segments, seed=4)
    where = [int((j + 0.5) * segments / needles) for j in range(needles)]
    for i in where:
        key = question + noise * rng.normal(size=KEY_DIM)
        keys[i] = key / np.linalg.norm(key)
    memory, grain = steady_memory(root / "needles", seconds, llm.hidden_size, keys)
    ids = {info.segment_index: info.id for info in memory.timeline("cam")}
    needle_ids = {ids[i] for i in where}
    span = (0.0, float(segments * SEG_FRAMES))
    qa = VideoQA(llm, memory, _FixedEmbedder(question), max_new_tokens=1, history_turns=0)
    rows = []
    for b in budgets:
        for label, kk in (("budget", None), (f"k={k}", k)):
            answer = qa.ask("When does the needle show?", k=kk, time_range=span, max_visual_tokens=b, remember=False)
            shown = {u.id for u in answer.segments if u.tokens > 0}
            rows.append(
                {
                    "max_visual_tokens": b,
                    "prompt": label,
                    "recall": len(shown & needle_ids) / len(needle_ids),
                    "segments_shown": len(shown),
                    "budget_use": answer.visual_tokens / b,
                }
            )
    memory.close()
    return {"seconds": seconds, "segments": segments, "needles": needles, "grain": grain, "k": k, "rows": rows}


def run_live_latency(
    *,
    seconds: float = 12.0,
    fps: float = 8.0,
    max_len: int = 8,
    batch_frames: int = 48,
    batch_micro: int = 2,
    batch_repeats: int = 3,
    tower: bool = True,
    tower_seconds: float = 100.0,
    tower_sample_fps: float = 1 / 15,
    tower_fps: float = 2.0,
    tower_repeats: int = 1,
    tower_batch_frames: int = 2,
    questions: int = 3,
    budgets: tuple[int, ...] = (128, 1024),
    lengths_s: tuple[float, ...] = (60.0, 3600.0, 36000.0),
    lm: bool = True,
    root: Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Every measurement of the part, in one run (see the module docstring)."""
    say = progress.log if progress is not None else (lambda *_: None)
    root = root or Path(tempfile.mkdtemp(prefix="streamvid-live-"))
    llm = load_adapter(str(tiny_llava(root / "llava")), device="cpu", dtype=torch.float32)
    out: dict[str, Any] = {"model": "tiny LLaVA-OneVision (random weights, float32, CPU)"}
    say("live: tiny model, loopback latency")
    out["latency"] = measure_latency(llm, root / "lat-tiny", fps=fps, seconds=seconds, max_len=max_len)
    say("live: tiny model, encoder batching")
    out["batching"] = measure_batching(
        llm, frames_per_stream=batch_frames, micro_batch=batch_micro, repeats=batch_repeats, threads=1
    )
    say("live: questions over 1 min / 1 h / 10 h memories, offline pipeline")
    out["questions"] = measure_questions(llm, root, lengths_s=lengths_s, budgets=budgets, questions=questions)
    if lm:
        say("live: questions again with a Qwen2-0.5B-shaped LM (the prefill a user waits for)")
        shaped_lm = build_llava_with_lm("0.5b", torch.device("cpu"), torch.float32)
        out["lm_model"] = "Qwen2-0.5B-shaped LM (random weights, float32, CPU) + tiny tower"
        out["questions_lm"] = measure_questions(
            shaped_lm, root / "lm", lengths_s=lengths_s, budgets=budgets[:1], questions=questions, threads=None
        )
        del shaped_lm
    say("live: needle recall")
    out["needles"] = measure_needles(llm, root, budgets=budgets)
    if tower:
        say("live: SigLIP-so400m-shaped tower (bfloat16): encoder batching, loopback latency")
        shaped = shaped_llava()
        out["tower_model"] = "SigLIP-so400m/14 @ 384 tower (random weights, bfloat16, CPU) + tiny LM"
        out["tower_batching"] = measure_batching(
            shaped, frames_per_stream=tower_batch_frames, micro_batch=1, repeats=tower_repeats, warm_shared=False
        )
        out["tower_latency"] = measure_latency(
            shaped,
            root / "lat-tower",
            fps=tower_fps,
            seconds=tower_seconds,
            max_len=2,
            sample_fps=tower_sample_fps,
            warmup_s=0.0,
            micro_batch=1,
        )
        alone = statistics.median(r["alone_fps"] for r in out["tower_batching"]["rows"])
        off = out["questions"]["offline"]
        off["tower_encode_s"] = off["frames"] / alone  # the offline frames at the tower's measured alone rate
    return out


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    result = run_live_latency(
        seconds=profile.live_seconds,
        batch_repeats=profile.live_batch_repeats,
        tower=profile.live_tower,
        tower_seconds=profile.live_tower_seconds,
        tower_repeats=profile.live_tower_repeats,
        questions=profile.live_questions,
        lm=getattr(profile, "live_lm", True),
        progress=progress,
    )
    if progress is not None:
        for line in summary(result).splitlines():
            progress.log(line)
    return result


def _length(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


def _span(q: dict[str, Any]) -> str:
    """'10 h / 1 min': the longest memory over the shortest."""
    return f"{_length(max(q['lengths_s']))} / {_length(min(q['lengths_s']))}"


def _ms(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 10 else f"{x:.1f} s"


def _latency_line(name: str, lat: dict[str, Any], target: bool) -> str:
    goal = f"; target p95 <= {_ms(lat['target_p95_s'])}" if target else " (no target)"
    return (
        f"{name}: send -> searchable p50 {_ms(lat['send_p50_s'])}, p95 {_ms(lat['send_p95_s'])}; "
        f"arrival -> searchable p50 {_ms(lat['arrival_p50_s'])}, p95 {_ms(lat['arrival_p95_s'])}{goal} "
        f"({lat['frames']} frames in {lat['segments']} segments of {lat['mean_segment_frames']:.1f} frames, "
        f"sent at {lat['fps']:g} fps, ingested at {lat['sample_fps']:.3g} fps, max_len {lat['max_len']}; "
        f"send -> arrival p50 {_ms(lat['wire_p50_s'])}; {lat['dropped']} dropped"
        + (f"; error: {lat['error']}" if lat.get("error") else "")
        + ")"
    )


def _batching_line(name: str, b: dict[str, Any]) -> str:
    rows = ", ".join(
        f"{r['streams']} streams {r['alone_fps']:.3g} -> {r['shared_fps']:.3g} frames/s = {r['gain']:.2f}x "
        f"({r['alone_calls']} -> {r['tower_calls']:g} tower calls)"
        for r in b["rows"]
    )
    return (
        f"{name} encoder batching (alone -> shared worker, micro-batch {b['micro_batch']}, "
        f"{b['frames_per_stream']} frames per stream, median of {b['repeats']}, torch threads {b['torch_threads']}): "
        f"{rows}"
    )


def _ttft_lines(q: dict[str, Any], model: str = "") -> list[str]:
    lines = []
    for table in q["budgets"]:
        rows = ", ".join(
            f"{_length(r['seconds'])} {_ms(r['ttft_s'])} (use {r['budget_use']:.2f}, {r['segments_shown']:g} segs)"
            for r in table["rows"]
        )
        threads = f"{q['torch_threads']} torch thread{'s' if q['torch_threads'] > 1 else ''}"
        lines.append(
            f"time to first token {model}at max_visual_tokens {table['max_visual_tokens']} ({threads}, 1% cap): "
            f"{rows}; {_span(q)} {table['ratio_longest_shortest']:.2f} (target <= 1.3)"
        )
    return lines


def summary(result: dict[str, Any]) -> str:
    lines = [_latency_line("tiny model live latency", result["latency"], True)]
    if "tower_latency" in result:
        lines.append(_latency_line("shaped tower live latency", result["tower_latency"], False))
    lines.append(_batching_line("tiny model", result["batching"]))
    if "tower_batching" in result:
        lines.append(_batching_line("shaped tower", result["tower_batching"]) + " (target >= 1.5x at 4 streams)")
    q = result["questions"]
    lines += _ttft_lines(q)
    if "questions_lm" in result:
        lines += _ttft_lines(result["questions_lm"], "with the Qwen2-0.5B-shaped LM, ")
    fuller = [(t["max_visual_tokens"], r) for t in q["budgets"] for r in t["rows"] if r["holds_more"]]
    if fuller:
        low = min(fuller, key=lambda p: p[1]["budget_use"])
        lines.append(
            f"budget use where the memory holds more than the budget: lowest {low[1]['budget_use']:.2f} "
            f"({_length(low[1]['seconds'])} at {low[0]} tokens; target >= 0.9)"
        )
    off = q["offline"]
    line = (
        f"offline pipeline, same question and model ({off['frames']} frames of a {off['clip_s']:g} s clip): "
        f"{_ms(off['ttft'])} = decode {_ms(off['decode'])} + encode {_ms(off['encode'])} + compress "
        f"{_ms(off['compress'])} + prefill {_ms(off['prefill'])} ({off['prompt_tokens']:.0f} prompt tokens)"
    )
    if "tower_encode_s" in off:
        line += f"; with the shaped tower the encode alone would take {_ms(off['tower_encode_s'])}"
    lines.append(line)
    n = result["needles"]
    recalls = ", ".join(
        f"{r['max_visual_tokens']} tokens {r['prompt']} {r['recall']:.2f} ({r['segments_shown']} segs)"
        for r in n["rows"]
    )
    lines.append(f"needle recall ({n['needles']} needles in {_length(n['seconds'])}): {recalls}")
    return "\n".join(lines)


def markdown(result: dict[str, Any], images: str) -> str:
    lat = result["latency"]
    lines = [
        "## Live path",
        "",
        f"{result['model']}"
        + (f"; shaped tower: {result['tower_model']}" if "tower_model" in result else "")
        + ". A loopback MPEG-TS stream (tcp://127.0.0.1) ingested by a LiveSession.",
        "",
        "| model | frames | send -> searchable p50 / p95 | arrival -> searchable p50 / p95 | target p95 | "
        "send -> arrival p50 | dropped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key, target in (("tiny", "latency", True), ("so400m-shaped", "tower_latency", False)):
        if key not in result:
            continue
        x = result[key]
        lines.append(
            f"| {name} ({x['sample_fps']:.3g} fps, max_len {x['max_len']}) | {x['frames']} | "
            f"{_ms(x['send_p50_s'])} / {_ms(x['send_p95_s'])} | {_ms(x['arrival_p50_s'])} / "
            f"{_ms(x['arrival_p95_s'])} | {_ms(x['target_p95_s']) if target else '-'} | {_ms(x['wire_p50_s'])} "
            f"| {x['dropped']} |"
        )
    lines += [
        "",
        f"Target on the tiny model: p95 <= one max_len of frames + 200 ms = {_ms(lat['target_p95_s'])}.",
        "",
        "| model | streams | alone (frames/s) | shared worker (frames/s) | gain | tower calls (shared / alone) |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("tiny", "batching"), ("so400m-shaped", "tower_batching")):
        if key in result:
            lines += [
                f"| {name} | {r['streams']} | {r['alone_fps']:.3g} | {r['shared_fps']:.3g} | {r['gain']:.2f} | "
                f"{r['tower_calls']:g} / {r['alone_calls']} |"
                for r in result[key]["rows"]
            ]
    q = result["questions"]
    lines += [
        "",
        "Target on the shaped tower: >= 1.5x at 4 streams.",
        "",
        f"Time to first token (one generated token), 1% cap, segments at the steady-state grain, torch threads "
        f"{q['torch_threads']} (the tiny LM)"
        + (f" and {result['questions_lm']['torch_threads']} (the shaped LM)" if "questions_lm" in result else "")
        + f", median of {q['questions']} rounds:",
        "",
        "| LM | budget | memory | segments | tokens held | TTFT | retrieve | plan | fetch | re-merge | prefill "
        "| prompt tokens | segments shown | budget use |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [("tiny", q)] + ([("Qwen2-0.5B-shaped", result["questions_lm"])] if "questions_lm" in result else [])
    for name, qs in runs:
        for table in qs["budgets"]:
            lines += [
                f"| {name} | {table['max_visual_tokens']} | {_length(r['seconds'])} | {r['segments']} | "
                f"{r['tokens_held']} | {_ms(r['ttft_s'])} | {_ms(r['retrieve_s'])} | {_ms(r['plan_s'])} | "
                f"{_ms(r['fetch_s'])} | {_ms(r['remerge_s'])} | {_ms(r['prefill_s'])} | "
                f"{r['prompt_tokens']:g} | {r['segments_shown']:g} | {r['budget_use']:.2f} |"
                for r in table["rows"]
            ]
    off = q["offline"]
    lines += [
        "",
        *(
            f"Ratio {_span(qs)} at {t['max_visual_tokens']} tokens, {name} LM: "
            f"{t['ratio_longest_shortest']:.2f} (target <= 1.3)."
            for name, qs in runs
            for t in qs["budgets"]
        ),
        "",
        f"Offline pipeline for the same question ({off['frames']} frames of a {off['clip_s']:g} s clip, same "
        f"model): {_ms(off['ttft'])} (decode {_ms(off['decode'])}, encode {_ms(off['encode'])}, compress "
        f"{_ms(off['compress'])}, prefill {_ms(off['prefill'])})"
        + (
            f"; the shaped tower would encode those frames in {_ms(off['tower_encode_s'])}."
            if "tower_encode_s" in off
            else "."
        ),
        "",
        "| needle stream | budget | prompt | recall | segments shown | budget use |",
        "|---|---|---|---|---|---|",
    ]
    n = result["needles"]
    lines += [
        f"| {n['needles']} needles, {_length(n['seconds'])} | {r['max_visual_tokens']} | {r['prompt']} | "
        f"{r['recall']:.2f} | {r['segments_shown']} | {r['budget_use']:.2f} |"
        for r in n["rows"]
    ]
    lines.append("")
    return "\n".join(lines)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    lat = result["latency"]
    head = result["questions"]["budgets"][0]
    out = {
        "live p95 /\ntarget": lat["arrival_p95_s"] / lat["target_p95_s"],
        "encoder gain,\n4 streams": result["batching"]["rows"][-1]["gain"],
        f"TTFT {_span(result['questions'])},\n{head['max_visual_tokens']} tokens": head["ratio_longest_shortest"],
        f"budget use,\n{_length(head['rows'][-1]['seconds'])}": head["rows"][-1]["budget_use"],
    }
    if "tower_batching" in result:
        out["so400m encoder gain,\n4 streams"] = result["tower_batching"]["rows"][-1]["gain"]
    if "questions_lm" in result:
        out[f"TTFT {_span(result['questions_lm'])},\n0.5B-shaped LM"] = result["questions_lm"]["budgets"][0][
            "ratio_longest_shortest"
        ]
    return out


PART = Part("live", run, markdown, ratios=ratios)


if __name__ == "__main__":
    import json

    result = run_live_latency(tower="--tower" in sys.argv)
    print(summary(result))
    print(json.dumps(result, indent=1, default=float))
