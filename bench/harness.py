"""Multiple-choice video benchmarks (VideoMME/MLVU-style JSON) with and without compression.

Question file: a JSON list of objects
    {"video": "clips/a.mp4", "question": "...", "options": ["...", "..."], "answer": "B", "time": 41.0}
(``video`` relative to the file; ``answer`` a letter or an option index; ``time``
optional, the moment the question is asked in streaming mode). Modes:

- ``full``: ``frames`` frames spread over the video, every visual token (keep_all).
- ``infomerge@R`` (any compressor name @ ratio): the same frames, compressed.
- ``streaming@R``: the video is ingested through the memory as it plays (sampling at
  ``fps``, streaming segmentation, compression at R, a global cap) and each question is
  asked when the stream reaches its time, from what the memory holds.

Accuracy is reported per mode and as a percentage of the ``full`` mode.
"""

from __future__ import annotations

import json
import string
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.ingest import build_ingest
from agents.qa import VideoQA
from memory import TokenMemory
from streamvid.compress import create_compressor
from streamvid.embedders import Embedder, NoEmbedder
from streamvid.errors import ConfigError
from streamvid.ingest import read_frames
from streamvid.models.base import VideoLLM

__all__ = ["load_questions", "mc_prompt", "parse_choice", "run_harness"]

LETTERS = string.ascii_uppercase


def load_questions(path: Path) -> list[dict[str, Any]]:
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty JSON list of questions")
    out = []
    for i, item in enumerate(items):
        missing = {"video", "question", "options", "answer"} - set(item)
        if missing:
            raise ConfigError(f"{path}: question {i} lacks {sorted(missing)}")
        answer = item["answer"]
        letter = LETTERS[answer] if isinstance(answer, int) else str(answer).strip().upper()[:1]
        if letter not in LETTERS[: len(item["options"])]:
            raise ConfigError(f"{path}: question {i} answer {answer!r} is not one of its options")
        video = Path(item["video"])
        out.append({**item, "video": video if video.is_absolute() else Path(path).parent / video, "answer": letter})
    return out


def mc_prompt(question: str, options: list[str]) -> str:
    lines = [question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


def parse_choice(text: str, n_options: int) -> str | None:
    """The first option letter in the answer ('B', 'B.', '(B)', 'The answer is B')."""
    valid = LETTERS[:n_options]
    for token in text.replace("(", " ").replace(")", " ").replace(".", " ").replace(":", " ").split():
        if len(token) == 1 and token.upper() in valid:
            return token.upper()
    return None


def _record(q: dict[str, Any], text: str, **extra: Any) -> dict[str, Any]:
    pred = parse_choice(text, len(q["options"]))
    return {
        "question": q["question"],
        "answer": q["answer"],
        "prediction": pred,
        "correct": pred == q["answer"],
        "output": text,
        **extra,
    }


def _answer(llm: VideoLLM, prompt: str, segments: list, max_new_tokens: int) -> str:
    return llm.generate(llm.build_prefill(prompt, segments), max_new_tokens=max_new_tokens).text


def run_harness(
    llm: VideoLLM,
    questions: list[dict[str, Any]],
    *,
    modes: tuple[str, ...] = ("full", "infomerge@0.15"),
    frames: int = 32,
    fps: float = 1.0,
    cap_tokens: int = 50_000,
    embedder: Embedder | None = None,
    max_new_tokens: int = 8,
    progress: Any = None,
) -> dict[str, Any]:
    say = progress.log if progress is not None else (lambda *_: None)
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    encoded: dict[Path, Any] = {}
    started = time.perf_counter()
    for mode in modes:
        if mode.startswith("streaming"):
            ratio = float(mode.split("@")[1]) if "@" in mode else 0.15
            run = _Streaming(llm, ratio, fps, cap_tokens, embedder or NoEmbedder(), max_new_tokens)
            records[mode] = run.run(questions)
            continue
        name, _, ratio = mode.partition("@")
        compressor = create_compressor("keep_all" if name == "full" else name, ratio=float(ratio or 1.0))
        for q in questions:
            if q["video"] not in encoded:
                encoded[q["video"]] = llm.encode(*read_frames(q["video"], frames))
            segments = compressor.compress(encoded[q["video"]], boundaries=[0, encoded[q["video"]].num_frames])
            text = _answer(llm, mc_prompt(q["question"], q["options"]), segments, max_new_tokens)
            records[mode].append(_record(q, text, visual_tokens=sum(s.budget for s in segments)))
        say(f"{mode}: {sum(r['correct'] for r in records[mode])}/{len(questions)} correct")
    accuracy = {m: sum(r["correct"] for r in rs) / len(rs) for m, rs in records.items()}
    base = accuracy.get("full")
    relative = {m: (100.0 * a / base if base else None) for m, a in accuracy.items()}
    return {
        "questions": len(questions),
        "accuracy": accuracy,
        "percent_of_full": relative,
        "records": dict(records),
        "seconds": time.perf_counter() - started,
    }


@dataclass(frozen=True)
class _Streaming:
    """Streaming mode: each video is ingested as it plays and each question is asked when
    the stream reaches its time, from what the memory holds then."""

    llm: VideoLLM
    ratio: float
    fps: float
    cap_tokens: int
    embedder: Embedder
    max_new_tokens: int

    def run(self, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_video: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for q in sorted(questions, key=lambda q: q.get("time", float("inf"))):
            by_video[q["video"]].append(q)
        return [record for video, pending in by_video.items() for record in self.one_video(video, pending)]

    def one_video(self, video: Path, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            memory = TokenMemory(tmp, cap_tokens=self.cap_tokens)
            qa = VideoQA(self.llm, memory, self.embedder, k=4, max_new_tokens=self.max_new_tokens, history_turns=0)

            def ask_due(now: float) -> None:
                while pending and pending[0].get("time", float("inf")) <= now:
                    q = pending.pop(0)
                    answer = qa.ask(mc_prompt(q["question"], q["options"]), time_range=(0.0, now), remember=False)
                    out.append(_record(q, answer.text, asked_at=now, visual_tokens=answer.prompt_tokens))

            def on_stored(segment: Any, _sid: int) -> None:
                ask_due(segment.end_time)

            compressor = create_compressor("infomerge", ratio=self.ratio)
            build_ingest(video, memory, self.llm, self.embedder, compressor, fps=self.fps, on_stored=on_stored).run()
            ask_due(float("inf"))  # questions after the end (or without a time)
            memory.close()
        return out
