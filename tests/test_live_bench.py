"""The live benchmark's measuring functions at tiny sizes: a real loopback stream, the shared
encoder, questions over steady-state memories, needle recall, and the printed report."""

import math

import numpy as np
import pytest
import torch

from bench.live_latency import (
    BITS,
    markdown,
    measure_batching,
    measure_latency,
    measure_needles,
    measure_questions,
    ratios,
    read_barcode,
    summary,
)
from bench.random_models import tiny_llava
from streamvid.models import load_adapter


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_adapter(str(tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def result(llm, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    return {
        "model": "tiny",
        "latency": measure_latency(llm, root / "lat", fps=8.0, seconds=4.0, max_len=4, warmup_s=0.5),
        "batching": measure_batching(llm, frames_per_stream=4, micro_batch=2, repeats=1, streams=(1, 2)),
        "questions": measure_questions(
            llm, root, lengths_s=(60.0, 600.0), budgets=(48, 256), questions=1, offline_frames=4, offline_clip_s=4.0
        ),
        "needles": measure_needles(llm, root, seconds=960.0, needles=6, budgets=(256,), k=2),
    }


def test_barcode_reads_back_every_bit():
    for index in (0, 1, 0x5A5A, (1 << BITS) - 1):
        img = np.full((96, 128, 3), 90, np.uint8)
        for b in range(BITS):
            y, x = 16 * (b // 8), 16 * (b % 8)
            img[y : y + 16, x : x + 16] = 255 if (index >> b) & 1 else 0
        assert read_barcode(img) == index


def test_loopback_latency_matches_frames_to_their_segments(result):
    lat = result["latency"]
    assert lat["connections"] == 1 and lat["error"] is None and lat["dropped"] == 0
    assert lat["frames"] >= 10 and lat["segments"] >= 2
    # sent before it arrived, arrived before it was searchable; a segment waits for its frames
    assert 0 < lat["wire_p50_s"] < lat["send_p50_s"]
    assert 0 < lat["arrival_p50_s"] <= lat["arrival_p95_s"] < lat["send_p95_s"] + 1e-9
    assert lat["arrival_p95_s"] >= (lat["max_len"] - 1) / lat["fps"] * 0.5
    assert lat["target_p95_s"] == pytest.approx(4 / 8 + 0.2)


def test_batching_rows_count_tower_calls(result):
    rows = result["batching"]["rows"]
    assert [r["streams"] for r in rows] == [1, 2]
    for r in rows:
        assert r["alone_fps"] > 0 and r["shared_fps"] > 0 and r["gain"] > 0
        assert 1 <= r["tower_calls"] <= r["alone_calls"]


def test_questions_keep_to_the_budget_over_steady_memories(result):
    q = result["questions"]
    small, large = q["budgets"]
    for table in q["budgets"]:
        assert math.isfinite(table["ratio_longest_shortest"])
        for r in table["rows"]:
            assert 0 < r["budget_use"] <= 1.0  # never over max_visual_tokens
            assert r["tokens_held"] <= max(r["segments"], int(0.01 * r["seconds"] * 196))
            assert r["ttft_s"] >= r["prefill_s"] > 0 and r["plan_s"] >= 0
    assert small["rows"][-1]["budget_use"] >= 0.9  # a budget the memory fills
    assert not large["rows"][0]["holds_more"]  # 1 min at 1%: less than the budget
    assert large["rows"][0]["budget_use"] < large["rows"][-1]["budget_use"]
    assert q["offline"]["ttft"] >= q["offline"]["encode"] > 0


def test_needle_recall_budget_vs_k(result):
    rows = {r["prompt"]: r for r in result["needles"]["rows"]}
    assert rows["k=2"]["segments_shown"] <= 2 and rows["k=2"]["recall"] <= 2 / 6 + 1e-9
    assert rows["budget"]["recall"] >= rows["k=2"]["recall"]
    assert rows["budget"]["budget_use"] <= 1.0


def test_report_prints_every_figure(result):
    text = summary(result)
    for needle in ("send -> searchable", "arrival -> searchable", "encoder batching", "time to first token"):
        assert needle in text
    assert "offline pipeline" in text and "needle recall" in text
    assert "## Live path" in markdown(result, "img")
    assert all(math.isfinite(v) for v in ratios(result).values())
