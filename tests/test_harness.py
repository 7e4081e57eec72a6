"""The benchmark harness end to end on a tiny random model and a three-question file."""

import json

import pytest
import torch
from agent_helpers import color_video

from bench.harness import load_questions, mc_prompt, parse_choice, run_harness
from bench.random_models import tiny_llava
from streamvid import ConfigError
from streamvid.models import load_adapter


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    color_video(root / "a.mp4", [("red", 4.0), ("green", 4.0)])
    color_video(root / "b.mp4", [("blue", 6.0)])
    (root / "questions.json").write_text(
        json.dumps(
            [
                {
                    "video": "a.mp4",
                    "question": "What colour comes first?",
                    "options": ["red", "green"],
                    "answer": "A",
                    "time": 3.0,
                },
                {
                    "video": "a.mp4",
                    "question": "What colour comes last?",
                    "options": ["red", "green"],
                    "answer": 1,
                    "time": 7.5,
                },
                {
                    "video": "b.mp4",
                    "question": "What colour is it?",
                    "options": ["red", "green", "blue"],
                    "answer": "C",
                },
            ]
        )
    )
    llm = load_adapter(str(tiny_llava(root / "llava")), device="cpu", dtype=torch.float32)
    return root, llm


def test_three_question_file_end_to_end(setup):
    root, llm = setup
    questions = load_questions(root / "questions.json")
    assert [q["answer"] for q in questions] == ["A", "B", "C"]
    report = run_harness(
        llm,
        questions,
        modes=("full", "infomerge@0.25", "streaming@0.25"),
        frames=8,
        fps=2,
        cap_tokens=200,
        max_new_tokens=3,
    )
    assert report["questions"] == 3
    assert set(report["accuracy"]) == {"full", "infomerge@0.25", "streaming@0.25"}
    full = report["accuracy"]["full"]
    for mode, records in report["records"].items():
        assert len(records) == 3
        for q, r in zip(sorted(questions, key=lambda q: q.get("time", float("inf"))), records):
            assert r["prediction"] == parse_choice(r["output"], len(q["options"]))
            assert r["correct"] == (r["prediction"] == r["answer"])
        assert report["accuracy"][mode] == sum(r["correct"] for r in records) / 3
        assert report["percent_of_full"][mode] == (100.0 * report["accuracy"][mode] / full if full else None)
    full_tokens = report["records"]["full"][0]["visual_tokens"]
    assert report["records"]["infomerge@0.25"][0]["visual_tokens"] < full_tokens
    asked = [r["asked_at"] for r in report["records"]["streaming@0.25"]]
    assert asked[0] >= 3.0 and asked[0] < 7.5  # asked when the stream reached its time, not at the end


def test_choice_parsing_and_prompt():
    assert parse_choice("B", 4) == "B" and parse_choice("(C) because", 4) == "C"
    assert parse_choice("The answer is D.", 4) == "D" and parse_choice("E", 4) is None
    assert parse_choice("nothing useful", 2) is None
    assert mc_prompt("Q?", ["x", "y"]).splitlines()[1:3] == ["A. x", "B. y"]


def test_bad_question_files(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text(json.dumps([{"video": "a.mp4", "question": "?", "options": ["a"], "answer": "C"}]))
    with pytest.raises(ConfigError, match="not one of its options"):
        load_questions(bad)
    bad.write_text(json.dumps([{"video": "a.mp4"}]))
    with pytest.raises(ConfigError, match="lacks"):
        load_questions(bad)
