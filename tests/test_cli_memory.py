"""The CLI on a memory it can trust: one writer, readers beside it, resume, no silent damage.

Real processes hold the writer lock; the CLI runs through typer's runner on tiny checkpoints.
"""

import subprocess
import sys

import pytest
from agent_helpers import color_video
from media import cut_at, noise_frame, write_video
from typer.testing import CliRunner

from bench.random_models import tiny_llava
from cli.main import app
from memory import TokenMemory


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-memory")
    return {
        "llava": str(tiny_llava(root / "llava")),
        "video": color_video(root / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)]),
    }


def ingest(models, source, mem, *extra):
    common = ("--model", models["llava"], "--embedder", "none", "--fps", 2, "--device", "cpu")
    return run("ingest", source, "--memory", mem, *common, "--cap-tokens", 10_000, *extra)


def ranges(mem):
    with TokenMemory(mem, read_only=True) as reader:
        return [(s.start, s.end, s.frame_count) for s in reader.timeline()], [s.id for s in reader.timeline()]


def test_ingesting_a_file_again_adds_nothing_and_from_start_replaces(models, tmp_path):
    mem = tmp_path / "mem"
    assert ingest(models, models["video"], mem).exit_code == 0
    first, ids = ranges(mem)
    assert len(first) == 3
    again = ingest(models, models["video"], mem)
    assert again.exit_code == 0, again.output
    assert "already ingested into stream 'default'; pass --from-start" in again.output
    assert ranges(mem) == (first, ids)  # no duplicates (today's main stored 6 segments here)
    redo = ingest(models, models["video"], mem, "--from-start")
    assert redo.exit_code == 0, redo.output
    spans, new_ids = ranges(mem)
    assert spans == first and set(new_ids).isdisjoint(ids)  # replaced, not duplicated


def test_a_second_writer_fails_at_once_and_readers_run_beside_it(models, tmp_path):
    mem = tmp_path / "mem"
    assert ingest(models, models["video"], mem).exit_code == 0
    script = "import sys; from memory import TokenMemory; m = TokenMemory(sys.argv[1]); print(1, flush=True); input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(mem)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "1"
        blocked = ingest(models, models["video"], mem, "--from-start")
        assert blocked.exit_code == 1 and "Traceback" not in blocked.output
        (line,) = [x for x in blocked.output.splitlines() if x.startswith("error:")]
        assert f"another streamvid process (pid {holder.pid}) is writing to" in line
        assert "Loading" not in blocked.output  # refused before any model loads
        asked = run("ask", mem, "What is red?", "--model", models["llava"], "--max-new-tokens", 2, "--device", "cpu")
        assert asked.exit_code == 0, asked.output  # ask only reads
        inspected = run("inspect", mem, "--plot", tmp_path / "b.png")
        assert inspected.exit_code == 0, inspected.output
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert len(ranges(mem)[0]) == 3  # the refused writer changed nothing
    assert ingest(models, models["video"], mem, "--from-start").exit_code == 0  # the dead holder's lock is free


def test_ask_video_resumes_a_half_built_cache_before_answering(models, tmp_path):
    from agents import build_ingest, ingest_complete
    from cli.commands import _video_memory
    from cli.common import DEFAULT_EMBEDDER
    from streamvid import create_compressor
    from streamvid.embedders import NoEmbedder
    from streamvid.models import load_adapter

    env = {"STREAMVID_CACHE": str(tmp_path / "cache")}
    video = models["video"]
    args = ("ask", video, "What is blue?", "--model", models["llava"], "--embedder", "none", "--device", "cpu")
    clean = run(*args, "--max-new-tokens", 2, env={"STREAMVID_CACHE": str(tmp_path / "clean")})
    assert clean.exit_code == 0, clean.output

    # a first run that died after its first segment (the same cache directory `ask` will use)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("STREAMVID_CACHE", env["STREAMVID_CACHE"])
    try:
        mem_dir = _video_memory(video, {"model": models["llava"], "embedder": "none"})
    finally:
        monkey.undo()
    assert DEFAULT_EMBEDDER != "none"

    class Died(Exception):
        pass

    def die_after_first(segment, sid):
        raise Died

    llm = load_adapter(models["llava"], device="cpu")
    with TokenMemory(mem_dir, cap_tokens=10_000) as mem:
        mem.update_settings(model=models["llava"], embedder="none", compressor="infomerge", ratio=0.15, fps=1.0)
        job = build_ingest(str(video), mem, llm, NoEmbedder(), create_compressor("infomerge", ratio=0.15), fps=1.0)
        job.stage.on_stored = die_after_first
        with pytest.raises(Died):
            job.run()
        assert mem.segment_counts() == (1, 0) and not ingest_complete(mem, video)

    resumed = run(*args, "--max-new-tokens", 2, env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "after" in resumed.output
    with TokenMemory(mem_dir, read_only=True) as reader:
        assert ingest_complete(reader, video)
        spans = [(s.start, s.end) for s in reader.timeline()]
    clean_dir = next((tmp_path / "clean" / "memories").iterdir())
    with TokenMemory(clean_dir, read_only=True) as reader:
        assert spans == [(s.start, s.end) for s in reader.timeline()]  # the same time ranges as a clean run


def test_holes_are_warnings_and_strict_makes_them_errors(models, tmp_path):
    whole = write_video(tmp_path / "whole.mkv", [i / 10 for i in range(80)], noise_frame)
    cut = cut_at(whole, tmp_path / "cut.mkv", 0.5)
    result = ingest(models, cut, tmp_path / "mem")
    assert result.exit_code == 0, result.output
    (warning,) = [x for x in result.output.splitlines() if x.startswith("warning:")]
    assert "cut.mkv: ends at" in warning and "s declared" in warning
    strict = ingest(models, cut, tmp_path / "strict", "--strict")
    assert strict.exit_code == 1 and "Traceback" not in strict.output
    (error,) = [x for x in strict.output.splitlines() if x.startswith("error:")]
    assert "ends at" in error and "declared" in error
