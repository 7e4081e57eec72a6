"""The streamvid command through typer's test runner, on tiny local checkpoints."""

import pytest
import torch
from agent_helpers import color_video
from typer.testing import CliRunner

from bench.random_models import tiny_llava, tiny_siglip
from cli.main import app
from streamvid.embedders import HFEmbedder, load_embedder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "llava": str(tiny_llava(root / "llava")),
        "siglip": str(tiny_siglip(root / "siglip")),
        "video": color_video(root / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)]),
        "root": root,
    }


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_hf_embedder_loads_and_embeds(setup):
    emb = load_embedder(setup["siglip"], device="cpu")
    assert isinstance(emb, HFEmbedder) and emb.dim == 32
    frames = torch.randint(0, 256, (3, 40, 50, 3), dtype=torch.uint8)
    f, t = emb.embed_frames(frames), emb.embed_text(["a red car", "a dog"])
    assert f.shape == (3, 32) and t.shape == (2, 32)
    assert torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_ingest_ask_inspect(setup, tmp_path):
    mem = tmp_path / "mem"
    result = run(
        "ingest",
        setup["video"],
        "--memory",
        mem,
        "--model",
        setup["llava"],
        "--embedder",
        setup["siglip"],
        "--cap-tokens",
        500,
        "--fps",
        2,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "ingested 18 frames into 3 segments" in result.output
    result = run("ask", mem, "What is green?", "--k", 2, "--max-new-tokens", 3, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "segments used:" in result.output and "timings: retrieve" in result.output
    result = run("ask", mem, "What happened?", "--start", 3.5, "--end", 5, "--max-new-tokens", 2, "--device", "cpu")
    assert result.exit_code == 0 and "default 3.0-5.5s" in result.output
    result = run("inspect", mem)
    assert result.exit_code == 0, result.output
    assert (mem / "budgets.png").stat().st_size > 1000 and "3 live" in result.output
    assert "tokens stored as float16; key index IDMap2,Flat" in result.output  # small: exact search


def test_ask_a_video_file_directly_uses_a_cached_memory(setup, tmp_path):
    env = {"STREAMVID_CACHE": str(tmp_path / "cache")}
    args = (
        "ask",
        setup["video"],
        "What is red?",
        "--model",
        setup["llava"],
        "--embedder",
        "none",
        "--max-new-tokens",
        2,
        "--device",
        "cpu",
    )
    first = run(*args, env=env)
    assert first.exit_code == 0, first.output
    memories = list((tmp_path / "cache" / "memories").iterdir())
    assert len(memories) == 1
    second = run(*args, env=env)
    assert second.exit_code == 0 and len(list((tmp_path / "cache" / "memories").iterdir())) == 1


def test_bad_paths_and_urls_give_one_line_errors(setup, tmp_path, monkeypatch):
    import agents.ingest

    monkeypatch.setattr(agents.ingest, "DEFAULT_RECONNECT_BACKOFF", (0.01, 0.01))  # the dead URL fails fast
    for args in (
        ("ask", tmp_path / "nope", "q"),
        ("ask", tmp_path, "q"),
        ("inspect", tmp_path),
        ("ingest", tmp_path / "missing.mp4", "--memory", tmp_path / "m", "--model", str(tmp_path / "unused")),
        (
            "ingest",
            "tcp://127.0.0.1:9",
            "--memory",
            tmp_path / "m2",
            "--model",
            setup["llava"],
            "--embedder",
            "none",
            "--device",
            "cpu",
        ),
        ("ask", tmp_path / "x", "q", "--model", str(tmp_path / "no-model")),
    ):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        errors = [line for line in result.output.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].split("error:")[1].strip(), result.output
        assert "Traceback" not in result.output
        assert result.stderr.lstrip().startswith(("error:", "warning:")) and "error:" not in result.stdout


def test_watch_a_live_stream_for_a_while(setup, tmp_path):
    from media import server_script
    from test_ingest_live import free_port, start_server

    port = free_port()
    server = start_server(server_script(tmp_path), port)
    try:
        result = run(
            "watch",
            f"tcp://127.0.0.1:{port}",
            "--memory",
            tmp_path / "live",
            "--model",
            setup["llava"],
            "--embedder",
            "none",
            "--fps",
            4,
            "--duration",
            4,
            "--device",
            "cpu",
        )
    finally:
        server.kill()
        server.wait(10)
    assert result.exit_code == 0, result.output
    assert "stopped:" in result.output and "segments" in result.output
    inspect = run("inspect", tmp_path / "live")
    assert inspect.exit_code == 0 and "camera" in inspect.output
