"""The example scripts run as a user would run them, offline, on tiny local checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import color_video

from bench.random_models import tiny_llava

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    return {
        "llava": str(tiny_llava(root / "llava")),
        "video": color_video(root / "v.mp4", [("red", 3.0), ("green", 3.0)]),
        "root": root,
    }


def run(args, stdin=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_long_video_qa_then_langchain_agent(setup):
    mem = setup["root"] / "v.memory"
    out = run(
        [
            "examples/long_video_qa.py",
            setup["video"],
            "What is red?",
            "What is green?",
            "--model",
            setup["llava"],
            "--embedder",
            "none",
            "--memory",
            mem,
            "--fps",
            "2",
        ]
    )
    assert out.count("Q: ") == 2 and "ingested" in out
    out = run(
        ["examples/langchain_agent.py", mem, "When is it green?", "--model", setup["llava"], "--embedder", "none"]
    )
    assert "[video_search]" in out and "[video_memory]" in out


def test_live_camera_with_typed_questions(setup):
    out = run(
        [
            "examples/live_camera.py",
            setup["video"],
            "--model",
            setup["llava"],
            "--embedder",
            "none",
            "--memory",
            setup["root"] / "live.memory",
            "--fps",
            "2",
        ],
        stdin="status\nWhat is happening?\n\n",
    )
    assert "SessionStatus" in out
