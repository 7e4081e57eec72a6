"""Question answering end to end on tiny models, time filters, eviction, LangChain glue."""

import pytest
import torch
from agent_helpers import ColorEmbedder, color_video
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

from agents import VideoQA, build_ingest, parse_clock, parse_time_range
from agents.langchain import VideoMemoryTool, VideoMomentRetriever, VideoSearchTool
from bench.random_models import tiny_llava
from memory import TokenMemory
from streamvid import ConfigError, create_compressor
from streamvid.embedders import NoEmbedder, key_frame_indices
from streamvid.models import load_adapter

PLAN = [("red", 4.0), ("green", 4.0), ("blue", 4.0), ("red", 4.0)]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_adapter(str(tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return color_video(tmp_path_factory.mktemp("video") / "colors.mp4", PLAN)


def ingest(llm, video, root, cap=100_000, embedder=None):
    memory = TokenMemory(root, cap_tokens=cap)
    compressor = create_compressor("infomerge", ratio=0.5)
    job = build_ingest(
        video, memory, llm, embedder or ColorEmbedder(), compressor, stream_id="cam", fps=2, max_size=None
    )
    job.run()
    return memory, job.stage


def test_ingest_then_ask_finds_the_planted_moment(llm, video, tmp_path):
    memory, indexer = ingest(llm, video, tmp_path / "mem")
    assert indexer.stats.segments == 4  # the colour cuts
    assert [round(s.start, 1) for s in memory.timeline("cam")] == [0.0, 4.0, 8.0, 12.0]
    qa = VideoQA(llm, memory, ColorEmbedder(), k=1, max_new_tokens=4)
    answer = qa.ask("When is the screen green?")
    assert [(u.start, u.end) for u in answer.segments] == [(4.0, 7.5)]
    # the answer is the model's own greedy reply to a prompt built from exactly the segments it names
    used = memory.get([u.id for u in answer.segments])
    again = llm.generate(llm.build_prefill("When is the screen green?", used), max_new_tokens=4)
    assert answer.text == again.text.strip() and answer.prompt_tokens == llm.prefill_length(
        "When is the screen green?", used
    )
    assert set(answer.timings) == {"retrieve", "plan", "fetch", "remerge", "assemble", "prefill", "decode", "total"}
    # the tiny tower has no pooling head: the answer records the fallback and the default layout
    assert (answer.saliency_source, answer.position_layout) == ("vision-feature-norm", "original")
    assert all(v >= 0 for v in answer.timings.values()) and answer.timings["prefill"] > 0
    # two segments come back in time order, whatever their scores
    two = VideoQA(llm, memory, ColorEmbedder(), k=2, max_new_tokens=2).ask("Show me the red parts")
    assert [u.start for u in two.segments] == [0.0, 12.0]
    # a time reference in the question becomes a filter
    later = qa.ask("What was red between 0:10 and 0:16?")
    assert later.time_range == (10.0, 16.0) and [u.start for u in later.segments] == [12.0]
    # multi-turn: the conversation is remembered and can be reset
    assert len(qa.history) == 2
    qa.reset()
    assert qa.history == []
    memory.close()


def test_recency_only_embedder_and_live_newest_segment(llm, video, tmp_path):
    memory, _ = ingest(llm, video, tmp_path / "mem", embedder=NoEmbedder())
    qa = VideoQA(llm, memory, NoEmbedder(), k=1, max_new_tokens=2)
    assert [u.start for u in qa.ask("What is happening?").segments] == [12.0]
    live = VideoQA(llm, memory, NoEmbedder(), k=1, live=True, max_new_tokens=2)
    assert [u.start for u in live.ask("What happened first?", time_range=(0, 3)).segments] == [0.0, 12.0]
    memory.close()


def test_evicted_time_range_says_nothing_was_retained(llm, video, tmp_path):
    memory, _ = ingest(llm, video, tmp_path / "mem", cap=2)
    evicted = [s for s in memory.timeline("cam") if s.evicted]
    assert evicted, "the cap of 2 tokens must evict some of the 4 segments"
    gone = evicted[0]
    qa = VideoQA(llm, memory, ColorEmbedder(), k=2, max_new_tokens=2)
    answer = qa.ask("What happened then?", time_range=(gone.start + 0.5, gone.end - 0.5))
    assert answer.nothing_retained and "evicted" in answer.text and "Nothing was retained" in answer.text
    memory.close()


def test_bad_questions(llm, video, tmp_path):
    memory, _ = ingest(llm, video, tmp_path / "mem")
    qa = VideoQA(llm, memory, ColorEmbedder())
    with pytest.raises(ConfigError):
        qa.ask("   ")
    empty = VideoQA(llm, TokenMemory(tmp_path / "empty", cap_tokens=10), ColorEmbedder())
    assert "holds no video" in empty.ask("Anything?").text
    memory.close()


@pytest.mark.parametrize(
    "question,now,expected",
    [
        ("What happened in the last 5 minutes?", 1000.0, (700.0, 1000.0)),
        ("anything in the past 30 seconds", 100.0, (70.0, 100.0)),
        ("in the last hour?", 7200.0, (3600.0, 7200.0)),
        ("what happened between 1:00 and 2:30", None, (60.0, 150.0)),
        ("from 0:45 to 1:10, who came in?", None, (45.0, 70.0)),
        ("what was on screen at 12:30?", None, (740.0, 760.0)),
        ("around 1:02:03", None, (3713.0, 3733.0)),
        ("in the first 2 minutes", None, (0.0, 120.0)),
        ("at 90s", None, (80.0, 100.0)),
        ("what is the man holding?", 50.0, None),
    ],
)
def test_time_references(question, now, expected):
    assert parse_time_range(question, now) == expected


def test_clock_and_key_frames():
    assert parse_clock("1:02:03") == 3723 and parse_clock("2 min") == 120 and parse_clock("1.5h") == 5400
    assert key_frame_indices(16) == [0, 8, 15] and key_frame_indices(2) == [0, 1]


def test_langchain_tools_and_retriever(llm, video, tmp_path):
    memory, _ = ingest(llm, video, tmp_path / "mem")
    qa = VideoQA(llm, memory, ColorEmbedder(), k=1, max_new_tokens=3)
    tools = {t.name: t for t in (VideoMemoryTool(qa=qa), VideoSearchTool(qa=qa, k=2))}
    chat = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "video_search", "args": {"question": "blue"}, "id": "call_1", "type": "tool_call"},
                        {
                            "name": "video_memory",
                            "args": {"question": "What is green?", "stream": "cam"},
                            "id": "call_2",
                            "type": "tool_call",
                        },
                    ],
                )
            ]
        )
    )
    message = chat.invoke("When is it blue, and what is green?")
    results = [tools[call["name"]].invoke(call) for call in message.tool_calls]
    assert all(isinstance(r, ToolMessage) for r in results)
    search, answer = results
    assert search.tool_call_id == "call_1" and search.artifact[0]["start"] == 8.0
    assert "0:08-0:12" in search.content
    assert answer.artifact.segments[0].start == 4.0 and "moments used: cam 0:04-0:08" in answer.content
    docs = VideoMomentRetriever(qa=qa, k=2).invoke("red")
    assert {d.metadata["start"] for d in docs} == {0.0, 12.0}
    assert set(docs[0].metadata) == {"id", "stream", "start", "end", "score", "evicted"}
    # a recoverable failure becomes a ToolException the agent sees as an error message
    failing = VideoMemoryTool(qa=qa, handle_tool_error=True)
    out = failing.invoke(
        {
            "name": "video_memory",
            "args": {"question": "what?", "start": 50.0, "end": 10.0},
            "id": "c3",
            "type": "tool_call",
        }
    )
    assert "start <= end" in out.content
    memory.close()


def test_aot_ingest_asks_the_tower_for_attention_maps(llm, video, tmp_path):
    memory = TokenMemory(tmp_path / "mem", cap_tokens=100_000)
    job = build_ingest(
        video, memory, llm, ColorEmbedder(), create_compressor("aot", ratio=0.5), stream_id="cam", fps=2, max_size=None
    )
    assert job.stage.attention_scores
    job.run()
    methods = {memory.get([s.id])[0].method for s in memory.timeline("cam")}
    assert methods == {"aot[attn_received+attn_received_late]"}
    # a compressor that uses no maps does not pay for eager attention
    other = build_ingest(video, memory, llm, ColorEmbedder(), create_compressor("infomerge"), stream_id="b", fps=2)
    assert not other.stage.attention_scores
    memory.close()
