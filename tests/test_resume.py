"""Idempotent ingest: a file ingest killed with SIGKILL resumes to the clean run's segments, with no
time range stored twice; a completed file adds nothing; from_start replaces."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agent_helpers import ColorEmbedder, color_video

from agents.ingest import build_ingest, ingest_complete, source_key
from bench.random_models import tiny_llava
from memory import TokenMemory
from streamvid import ConfigError, create_compressor
from streamvid.models import load_adapter

PLAN = [("red", 3.0), ("green", 2.0), ("blue", 3.0), ("red", 2.0), ("green", 2.0)]
OPTIONS = {"stream_id": "cam", "fps": 4, "max_size": None, "max_len": 4}

CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import torch
from agent_helpers import ColorEmbedder
from agents.ingest import build_ingest
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.models import load_adapter

root, model, video, pause_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
llm = load_adapter(model, device="cpu", dtype=torch.float32)
memory = TokenMemory(root, cap_tokens=100_000)


def stored(segment, sid):
    print(segment.index, flush=True)
    if segment.index == pause_at:
        sys.stdin.readline()  # hold still: the test kills us here


job = build_ingest(video, memory, llm, ColorEmbedder(), create_compressor("infomerge", ratio=0.5), on_stored=stored,
                   **{options!r})
job.run()
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = tiny_llava(root / "llava")
    video = color_video(root / "colors.mp4", PLAN)
    llm = load_adapter(str(model), device="cpu", dtype=torch.float32)
    with TokenMemory(root / "clean", cap_tokens=100_000) as clean:
        job = ingest(llm, video, clean)
        job.run()
        assert ingest_complete(clean, video, "cam")
        segments = spans(clean)
        tokens = tokens_by_index(clean)
    script = root / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), options=OPTIONS))
    return {"root": root, "model": str(model), "video": video, "llm": llm, "clean": segments, "tokens": tokens}


def ingest(llm, video, memory, **kwargs):
    compressor = create_compressor("infomerge", ratio=0.5)
    return build_ingest(video, memory, llm, ColorEmbedder(), compressor, **OPTIONS, **kwargs)


def spans(memory) -> list[tuple[float, float, int, int]]:
    """(start, end, frames, segment index) of the stream's segments, in time order."""
    return [(s.start, s.end, s.frame_count, s.segment_index) for s in memory.timeline("cam")]


def tokens_by_index(memory) -> dict[int, torch.Tensor]:
    infos = memory.timeline("cam")
    return {s.segment_index: seg.tokens for s, seg in zip(infos, memory.get([s.id for s in infos]))}


def assert_no_duplicates(segments):
    for (start, end, _, _), (next_start, _, _, _) in zip(segments, segments[1:]):
        assert next_start > end, f"{start}-{end} s overlaps the next segment at {next_start} s"


def test_the_clean_run_has_many_segments(setup):
    clean = setup["clean"]
    assert len(clean) >= 8 and [s[3] for s in clean] == list(range(len(clean)))
    assert_no_duplicates(clean)


@pytest.mark.parametrize("moment", ["after the first segment", "mid-segment", "after the last segment"])
def test_sigkill_then_resume_gives_the_clean_segments(setup, tmp_path, moment):
    clean = setup["clean"]
    n = len(clean)
    pause_at, read = {
        "after the first segment": (0, 1),
        "mid-segment": (-1, n // 2),
        "after the last segment": (n - 1, n),
    }[moment]
    root = tmp_path / "mem"
    child = subprocess.Popen(
        [
            sys.executable,
            str(setup["root"] / "child.py"),
            str(root),
            setup["model"],
            str(setup["video"]),
            str(pause_at),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    reported = [child.stdout.readline().strip() for _ in range(read)]
    child.send_signal(signal.SIGKILL)  # paused between segments, or (mid-segment) wherever it got to
    child.wait(timeout=30)
    assert reported == [str(i) for i in range(read)], reported
    with TokenMemory(root) as memory:  # takes the killed writer's lock over
        before = spans(memory)
        assert before == clean[: len(before)] and read <= len(before) <= read + 1  # at most the one in flight
        progress = memory.source_progress("cam", source_key(setup["video"]))
        assert progress is not None and not progress.complete and progress.last_time == before[-1][1]
        assert not ingest_complete(memory, setup["video"], "cam")
        job = ingest(setup["llm"], setup["video"], memory)
        assert job.resume_from == before[-1][1] and not job.already_complete
        stats = job.run()
        after = spans(memory)
        print(f"{moment}: {len(before)} segments before resume, {len(after)} after, clean run {n}")
        assert after == clean  # identical time ranges, frame counts and indices
        assert_no_duplicates(after)
        assert stats.segments == n - len(before) and (job.skipped_frames > 0) == (len(before) > 0)
        tokens = tokens_by_index(memory)
        assert all(torch.equal(tokens[i], setup["tokens"][i]) for i in range(n))
        assert ingest_complete(memory, setup["video"], "cam")


def test_a_completed_file_adds_nothing_and_from_start_replaces(setup, tmp_path):
    llm, video = setup["llm"], setup["video"]
    with TokenMemory(tmp_path / "mem", cap_tokens=100_000) as memory:
        ingest(llm, video, memory).run()
        ids = [s.id for s in memory.timeline("cam")]
        again = ingest(llm, video, memory)
        assert again.already_complete
        assert again.run().segments == 0 and [s.id for s in memory.timeline("cam")] == ids
        with pytest.raises(ConfigError, match="from_start=True to replace it"):
            ingest(llm, video, memory, resume=False)
        fresh = ingest(llm, video, memory, from_start=True)
        assert fresh.run().segments == len(ids)
        assert spans(memory) == setup["clean"]  # replaced, not doubled
        assert min(s.id for s in memory.timeline("cam")) > max(ids)  # new ids; the old ones are gone
        assert memory.segment_counts() == (len(ids), 0) and ingest_complete(memory, video, "cam")
        assert memory.tokens_held == sum(s.tokens for s in memory.timeline("cam"))
        (hits,) = memory.search(torch.tensor([1.0, 0.0, 0.0]), k=50)
        assert sorted(h.segment.id for h in hits) == sorted(s.id for s in memory.timeline("cam"))
    with TokenMemory(tmp_path / "mem", read_only=True) as reader:  # a reader asks the same question
        assert ingest_complete(reader, video, "cam") and not ingest_complete(reader, video, "other")


def test_an_edited_file_is_a_new_source(setup, tmp_path):
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(Path(setup["video"]).read_bytes())
    key = source_key(copy)
    assert key.startswith(f"file:{copy.resolve()}:")
    os.utime(copy, ns=(0, 10**18))
    assert source_key(copy) != key and source_key(str(copy)) == source_key(copy)
    assert source_key("rtsp://cam1/stream") == "rtsp://cam1/stream" and source_key([]) is None
