"""streamvid on Ray (agents/cluster): the same segments and retrievals as one process, an encoder actor
killed mid-stream survived without duplicates, an unreachable shard reported, the global cap kept
across shards and rebalanced on the coordinator's own clock, answers streamed piece by piece,
thumbnails and alerts behind the REST front; and the pure rules (sticky assignment, cap shares, the
global merge).

The Ray tests (marker ``ray``) start one small local cluster for the module: 5 logical CPUs on loopback,
two encoder actors, the answering actor and the coordinator, on tiny random checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from media import scene_frame, write_video

from agents.cluster import (
    ClusterConfig,
    ShardSummary,
    StreamSpec,
    assign_streams,
    cap_shares,
    global_id,
    local_id,
    merge_hits,
    shard_dir,
    shard_weights,
)
from streamvid.errors import ConfigError

# -- the pure rules --------------------------------------------------------------------------------


def test_assignment_is_sticky_and_moves_only_what_evens_the_load():
    streams = [f"cam{i}" for i in range(7)]
    first = assign_streams(streams, [0, 1])
    assert sorted(first.values()).count(0) in (3, 4) and set(first.values()) == {0, 1}
    assert assign_streams(streams, [0, 1], first) == first  # nothing changes without a reason
    grown = assign_streams(streams, [0, 1, 2], first)
    moved = {s for s in streams if grown[s] != first[s]}
    assert all(grown[s] == 2 for s in moved) and len(moved) == 2  # the new actor takes just enough
    shrunk = assign_streams(streams, [0, 2], grown)  # actor 1 left: only its streams move
    assert all(shrunk[s] == grown[s] for s in streams if grown[s] != 1)
    assert set(shrunk.values()) == {0, 2} and max(list(shrunk.values()).count(a) for a in (0, 2)) == 4
    with pytest.raises(ConfigError, match="no encoder actor"):
        assign_streams(streams, [])


def _summary(name: str, means: torch.Tensor, tokens: int = 10) -> ShardSummary:
    k = means.shape[0]
    lengths = torch.full((k,), 4, dtype=torch.long)
    return ShardSummary(name, means, lengths, torch.full((k,), 0.5, dtype=torch.float64),
                        torch.full((k,), tokens, dtype=torch.long), (4 * means.double()).sum(0), 4.0 * k)  # fmt: skip


def test_cap_shares_follow_caba_weights_and_sum_to_the_cap():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, generator=gen)
    dull = _summary("dull", base + 0.01 * torch.randn(6, 16, generator=gen))  # six near-identical segments
    varied = _summary("varied", torch.randn(6, 16, generator=gen))  # six distinct ones
    w = shard_weights([dull, varied])
    assert w["varied"] > w["dull"] > 0  # the union's CABA weights: unique content weighs more
    shares = cap_shares(w, ["dull", "varied", "new"], 1000)
    assert sum(shares.values()) == 1000 and shares["varied"] > shares["dull"]
    assert min(shares["dull"], shares["varied"]) <= shares["new"] <= max(shares["dull"], shares["varied"])
    done = cap_shares(w, ["dull", "varied"], 1000, held={"dull": 60}, done=["dull"])
    assert done == {"dull": 60, "varied": 940}  # a finished shard needs no more than it holds
    with pytest.raises(ConfigError, match="cannot give 3 shards"):
        cap_shares(w, ["a", "b", "c"], 2)


def test_global_merge_and_global_ids():
    class Info:
        def __init__(self, stream, start):
            self.stream, self.start = stream, start

    a = [(0.9, Info("a", 1.0)), (0.5, Info("a", 2.0))]
    b = [(0.7, Info("b", 0.0)), (0.5, Info("b", 0.5))]
    merged = merge_hits([a, b], 3)
    assert [(s, i.stream, i.start) for s, i in merged] == [(0.9, "a", 1.0), (0.7, "b", 0.0), (0.5, "b", 0.5)]
    assert local_id(global_id(5, 123)) == (5, 123) and global_id(5, 123) < 2**53
    with pytest.raises(ConfigError, match="stream id"):
        StreamSpec("../etc", "x.mp4")
    for bad in (-1, float("inf"), float("nan")):  # an endless wait would end the coordinator's loop
        with pytest.raises(ConfigError, match="rebalance_every"):
            ClusterConfig(root="r", model="m", rebalance_every=bad)


@pytest.mark.parametrize(
    "pieces, final",
    [
        (["Yes", ". ", "It", " opens", " "], "Yes. It opens"),
        (["  ", " Yes", ".", "  "], "Yes."),  # leading and trailing whitespace stripped
        (["Yes", ". ", " "], "Yes.\n(Note: camera b's memory is unavailable.)"),  # a note after the text
        (["Yes", ".\n\n"], "Yes.\n(Note: nothing was retained for 0:10-0:20.)"),
        ([], "Nothing was recorded between 0:00 and 0:10."),  # nothing decoded: the whole text at the end
        (["", "a", "", " b"], "a b"),
    ],
)
def test_streamed_pieces_join_to_the_final_text_exactly(pieces, final):
    pytest.importorskip("ray")
    from agents.cluster.actors import TextJoin

    join = TextJoin()
    sent = [join.piece(p) for p in pieces]
    sent.append(join.rest(final))
    assert "".join(sent) == final
    assert all(piece == piece.rstrip() for piece in sent[:-1])  # whitespace is sent only before more text


def test_a_rewritten_decode_sends_nothing_more():
    pytest.importorskip("ray")
    from agents.cluster.actors import TextJoin

    join = TextJoin()
    assert join.piece("Yes ,") == "Yes ,"
    assert join.rest("Yes, it opens") == ""  # the answer event carries the text


def yes_judge(rule, segment):
    """The alert judge of the test cluster: every checked segment fires (pickled to the actors by
    reference: the cluster fixture puts this directory on the workers' PYTHONPATH)."""
    return True, "yes"


# -- on a local Ray cluster ------------------------------------------------------------------------

FPS, MAX_LEN = 2.0, 4
PLANS = {"a": [(0, 3.0), (1, 3.0), (2, 3.0)], "b": [(3, 4.0), (4, 5.0)], "c": [(5, 3.0), (6, 3.0), (7, 3.0), (8, 3.0)]}


def _video(path: Path, plan: list[tuple[int, float]]) -> Path:
    times, scenes, t = [], {}, 0.0
    for scene, seconds in plan:
        for _ in range(round(seconds * 4)):
            times.append(round(t, 6))
            scenes[round(t, 6)] = scene
            t += 0.25
    return write_video(path, times, lambda t: scene_frame(scenes[round(t, 6)], t))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bench.random_models import tiny_llava, tiny_siglip

    root = tmp_path_factory.mktemp("cluster")
    return {
        "root": root,
        "llava": str(tiny_llava(root / "llava")),
        "siglip": str(tiny_siglip(root / "siglip")),
        "videos": {name: str(_video(root / f"{name}.mp4", plan)) for name, plan in PLANS.items()},
    }


def _spans(infos):
    return [(s.stream, s.start, s.end, s.frame_count, s.tokens, s.original_tokens) for s in infos]


@pytest.fixture(scope="module")
def reference(setup):
    """Every stream ingested in this process, into one memory: what the cluster must reproduce."""
    from agents import VideoQA, build_ingest
    from memory import TokenMemory
    from streamvid.compress import create_compressor
    from streamvid.embedders import load_embedder
    from streamvid.models import load_adapter

    llm = load_adapter(setup["llava"], device="cpu", dtype=torch.float32)
    emb = load_embedder(setup["siglip"], device="cpu")
    comp = create_compressor("infomerge", ratio=0.5)
    memory = TokenMemory(setup["root"] / "single", cap_tokens=100_000)
    for name, video in setup["videos"].items():
        build_ingest(video, memory, llm, emb, comp, stream_id=name, fps=FPS, max_len=MAX_LEN, micro_batch=2).run()
    qa = VideoQA(llm, memory, emb, live=True, max_new_tokens=2)  # the cluster answers live questions
    yield {"memory": memory, "qa": qa, "spans": {n: _spans(memory.timeline(n)) for n in PLANS}}
    memory.close()


@pytest.fixture(scope="module")
def cluster(setup):
    ray = pytest.importorskip("ray")  # the ray extra (in dev, so CI has it)
    from agents.cluster import Cluster

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    here = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONPATH": here}})  # fmt: skip
    config = ClusterConfig(
        root=str(setup["root"] / "mem"), model=setup["llava"], embedder=setup["siglip"], ratio=0.5, fps=FPS,
        max_len=MAX_LEN, micro_batch=2, dtype="float32", encoders=2, cap_tokens=100_000, max_new_tokens=2,
        cpus_per_encoder=1, answer_cpus=1, search_cpus=0.5, rebalance_every=0, alert_judge=yes_judge,
    )  # fmt: skip
    c = Cluster(config)
    yield c
    c.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def two_streams(cluster, reference, setup):
    """a and b ingested by the cluster (after the reference, which runs while the actors load)."""
    for name in ("a", "b"):
        cluster.add_stream(StreamSpec(name, setup["videos"][name]))
    return cluster.wait(["a", "b"], timeout=120)


@pytest.mark.ray
def test_two_stream_ingest_gives_the_single_process_segments(cluster, two_streams, reference):
    assert {s["id"]: s["state"] for s in two_streams} == {"a": "finished", "b": "finished"}
    assert {s["id"]: s["encoder"] for s in two_streams} in ({"a": 0, "b": 1}, {"a": 1, "b": 0})  # one actor each
    for name in ("a", "b"):
        got = _spans(cluster.segments(name))
        assert got == reference["spans"][name] and len(got) >= 3  # time ranges and token counts


@pytest.mark.ray
def test_retrieved_segments_equal_the_single_memory_result(cluster, two_streams, reference):
    question = "what happens at the red door?"
    for k in (None, 3):
        got, unavailable = cluster.retrieve(question, k, streams=["a", "b"])
        want = reference["qa"].retrieve(question, k, None, ["a", "b"])
        assert unavailable == {}
        assert [(s.stream, s.start, s.end) for s, _ in got] == [(s.stream, s.start, s.end) for s, _ in want]
        assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-5)
    answer = cluster.ask(question, streams=["a", "b"], max_visual_tokens=60)
    single = reference["qa"].ask(question, streams=["a", "b"], max_visual_tokens=60, remember=False)
    assert [(u.stream, u.start, u.end, u.tokens) for u in answer.segments] == [
        (u.stream, u.start, u.end, u.tokens) for u in single.segments
    ]
    assert answer.visual_tokens == single.visual_tokens <= 60 and answer.unavailable == {}


@pytest.mark.ray
def test_answers_stream_piece_by_piece_from_the_answering_actor(cluster, two_streams, setup):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from agents.cluster.service import ClusterService
    from agents.service.app import create_app
    from agents.service.core import ServiceConfig

    question = "what happens at the red door?"  # the random model's answer has four whitespace-split pieces
    pieces: list[str] = []
    streamed = cluster.ask(question, streams=["a", "b"], max_visual_tokens=60, max_new_tokens=32,
                           on_text=pieces.append)  # fmt: skip
    whole = cluster.ask(question, streams=["a", "b"], max_visual_tokens=60, max_new_tokens=32)
    assert len(pieces) > 1 and all(pieces), pieces  # several pieces, as they decoded
    assert "".join(pieces).strip() == streamed.text == whole.text  # the same greedy answer
    assert [u.id for u in streamed.segments] == [u.id for u in whole.segments]

    service = ClusterService(cluster, ServiceConfig(media_roots=[setup["root"]]), event_poll=0)
    with TestClient(create_app(service, mcp=False)) as client:
        body = {"question": question, "streams": ["a", "b"], "max_visual_tokens": 60, "max_new_tokens": 32,
                "stream": True}  # fmt: skip
        reply = client.post("/v1/ask", json=body)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in reply.text.strip().split("\n\n")]
    kinds = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    tokens = [d["text"] for k, d in zip(kinds, data) if k == "token"]
    assert kinds[-1] == "answer" and kinds.count("token") == len(pieces) > 1
    assert "".join(tokens).strip() == data[-1]["text"] == whole.text


@pytest.mark.ray
def test_an_encoder_actor_killed_mid_stream_restarts_and_resumes_without_duplicates(cluster, two_streams, reference,
                                                                                    setup):  # fmt: skip
    import ray

    from memory import TokenMemory

    cluster.add_stream(StreamSpec("c", setup["videos"]["c"], pace=4.0))  # 12 s of video in about 3 s
    slot = cluster.slot_of("c")
    actor = cluster.encoders[slot]
    before = cluster.encoder_info()[slot]
    shard = shard_dir(cluster.config.root, "c")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the first segment of c is stored
        if (shard / "manifest.sqlite").is_file():
            with TokenMemory(shard, read_only=True) as reader:
                if reader.segment_counts()[0] >= 1:
                    stored_at_kill = _spans(reader.timeline("c"))
                    break
        time.sleep(0.05)
    else:
        pytest.fail("stream c stored no segment within 60 s")
    ray.kill(actor, no_restart=False)  # the process dies; Ray restarts the actor
    (status,) = cluster.wait(["c"], timeout=120)
    after = cluster.encoder_info()[slot]
    assert after["pid"] != before["pid"] and after["starts"] == before["starts"] + 1
    assert status["state"] == "finished" and status["resumed_from"] is not None
    assert len(stored_at_kill) < len(reference["spans"]["c"])  # the kill came mid-stream
    got = _spans(cluster.segments("c"))
    assert got == reference["spans"]["c"]  # every time range once, as one uninterrupted run stores them
    assert len({(s[1], s[2]) for s in got}) == len(got)
    # the restarted actor's finished stream (a or b) was not ingested again
    assert _spans(cluster.segments("a")) == reference["spans"]["a"]
    assert _spans(cluster.segments("b")) == reference["spans"]["b"]


@pytest.mark.ray
def test_a_shard_whose_directory_is_gone_is_reported_in_the_answer(cluster, two_streams):
    shard = shard_dir(cluster.config.root, "b")
    away = shard.with_name("b.unmounted")
    shard.rename(away)  # the node or mount holding b's shard is gone
    try:
        answer = cluster.ask("what is on camera b?", max_visual_tokens=60)
        assert set(answer.unavailable) == {"b"}
        assert "camera b's memory is unavailable" in answer.text
        assert answer.segments and {u.stream for u in answer.segments} <= {"a", "c"}
        stats = cluster.stats()
        assert "b" in stats["unavailable"]
    finally:
        away.rename(shard)
    assert cluster.ask("what is on camera b?", max_visual_tokens=60).unavailable == {}


@pytest.mark.ray
def test_the_cluster_command_joins_the_running_cluster(cluster, two_streams, setup, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    def cli(*args):
        return CliRunner().invoke(app, ["cluster", *[str(a) for a in args]])

    root = cluster.config.root
    run = cli("run", "--memory", root, "--address", "auto", "--detach", "--stream", f"d={setup['videos']['a']}",
              "--model", setup["llava"], "--embedder", setup["siglip"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "d: finished on encoder" in run.output
    assert _spans(cluster.segments("d")) == [("d", *s[1:]) for s in _spans(cluster.segments("a"))]  # a's video
    status = cli("status", "--memory", root)
    assert status.exit_code == 0 and all(f"{n}: finished" in status.output for n in "abd"), status.output
    ask = cli("ask", "what is on camera d?", "--memory", root, "--stream", "d", "--max-visual-tokens", 60)
    assert ask.exit_code == 0 and "segments used: d " in ask.output, ask.output
    missing = cli("ask", "anything?", "--memory", tmp_path / "elsewhere")
    assert missing.exit_code == 1 and "no streamvid cluster runs on" in missing.output


@pytest.mark.ray
def test_the_rest_service_serves_the_cluster_as_its_backend(cluster, two_streams, setup):
    pytest.importorskip("fastapi")  # the serve extra (in dev)
    from fastapi.testclient import TestClient

    from agents.cluster.service import ClusterService
    from agents.service.app import create_app
    from agents.service.core import ServiceConfig

    key = "cluster-key-0123456789"
    auth = {"Authorization": f"Bearer {key}"}
    service = ClusterService(cluster, ServiceConfig(keys=[key], media_roots=[setup["root"]], max_new_tokens=2))
    with TestClient(create_app(service, mcp=False)) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/v1/streams").status_code == 401
        listed = client.get("/v1/streams", headers=auth).json()
        assert {"a", "b"} <= {s["id"] for s in listed["streams"]} and listed["token_cap"] == 100_000
        question = {"question": "what happens at the red door?", "streams": ["a", "b"], "max_visual_tokens": 60}
        reply = client.post("/v1/ask", json=question, headers=auth)
        assert reply.status_code == 200, reply.text
        direct = cluster.ask(question["question"], streams=["a", "b"], max_visual_tokens=60)
        assert [(u["stream"], u["start"], u["end"], u["tokens"]) for u in reply.json()["segments"]] == [
            (u.stream, u.start, u.end, u.tokens) for u in direct.segments
        ]
        segments = client.get("/v1/segments", params={"stream": "a"}, headers=auth).json()["segments"]
        assert [(s["start"], s["end"], s["tokens"]) for s in segments] == [
            (s.start, s.end, s.tokens) for s in cluster.segments("a")
        ]
        assert client.post("/v1/ask", json={"question": "x", "streams": ["nope"]}, headers=auth).status_code == 404
        bad = client.post("/v1/streams", json={"id": "e", "source": "../a.mp4"}, headers=auth)
        assert bad.status_code == 403 and bad.json()["error"] == "path_traversal"
        added = client.post("/v1/streams", json={"id": "e", "source": "a.mp4"}, headers=auth)
        assert added.status_code == 201 and added.json()["id"] == "e", added.text
        assert client.delete("/v1/streams/e", headers=auth).json()["removed"] == "e"
        assert "e" not in {s["id"] for s in client.get("/v1/streams", headers=auth).json()["streams"]}
        assert b"streamvid_tokens_held" in client.get("/metrics").content


@pytest.mark.ray
def test_the_global_cap_is_kept_across_shards_by_caba_shares(cluster, two_streams):
    held = cluster.stats()["tokens_held"]
    cap = held * 2 // 3  # below what the shards hold now: they re-merge (and may evict) to their shares
    plan = cluster.set_cap(cap)
    stats = cluster.stats()
    assert stats["token_cap"] == cap and sum(plan["shares"].values()) <= cap
    assert stats["tokens_held"] <= cap < held
    for name, share in stats["shares"].items():
        assert stats["held"][name] <= share


@pytest.mark.ray
def test_scaling_the_encoder_actors_moves_only_what_evens_the_load(cluster, two_streams):
    before = {s["id"]: s["encoder"] for s in cluster.streams()}
    spans = _spans(cluster.segments())
    grown = cluster.scale(3)
    moved = {s for s in grown if grown[s] != before[s]}
    assert len(moved) == 1 and all(grown[s] == 2 for s in moved)  # 2 + 2 streams -> 2 + 1 + 1
    status = {s["id"]: s for s in cluster.streams()}
    (name,) = moved
    assert status[name]["encoder"] == 2 and status[name]["state"] == "finished"  # opened by the new actor
    shrunk = cluster.scale(2)
    assert shrunk[name] in (0, 1) and all(shrunk[s] == grown[s] for s in grown if s != name)
    assert _spans(cluster.segments()) == spans  # moving a stream stores nothing twice


@pytest.mark.ray
def test_thumbnails_are_written_into_the_shards_and_served_by_global_id(cluster, two_streams, setup):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from agents.cluster.service import ClusterService
    from agents.service.app import create_app
    from agents.service.core import ServiceConfig
    from agents.service.streams import thumbnail_path

    service = ClusterService(cluster, ServiceConfig(media_roots=[setup["root"]]), event_poll=0)
    with TestClient(create_app(service, mcp=False)) as client:
        rows = client.get("/v1/segments", params={"stream": "b"}).json()["segments"]
        assert rows and all(r["thumbnail"] == f"/v1/segments/{r['id']}/thumbnail.jpg" for r in rows)
        for row in rows:
            shard_no, sid = local_id(row["id"])
            assert thumbnail_path(shard_dir(cluster.config.root, "b"), sid).is_file()  # in b's own shard
            image = client.get(row["thumbnail"])
            assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
        a_rows = client.get("/v1/segments", params={"stream": "a"}).json()["segments"]
        assert client.get(a_rows[0]["thumbnail"]).content != client.get(rows[0]["thumbnail"]).content
        moments = client.get("/v1/search", params={"q": "the red door", "k": 3}).json()["moments"]
        assert moments and client.get(moments[0]["thumbnail"]).status_code == 200
        for missing in (global_id(shard_no, 10**6), global_id(10**5, 0)):  # no such segment; no such shard
            gone = client.get(f"/v1/segments/{missing}/thumbnail.jpg")
            assert gone.status_code == 404 and gone.json()["error"] == "no_thumbnail"


@pytest.mark.ray
def test_alert_rules_run_on_the_encoder_actors_and_fire_events(cluster, two_streams, setup):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from agents.cluster.service import ClusterService
    from agents.service.app import create_app
    from agents.service.core import ServiceConfig
    from agents.service.security import ServiceError

    service = ClusterService(cluster, ServiceConfig(media_roots=[setup["root"]]), event_poll=0)
    with TestClient(create_app(service, mcp=False)) as client:
        assert client.post("/v1/alerts", json={"stream": "nope", "rule": "x"}).status_code == 404
        with pytest.raises(ServiceError, match="rule must be") as bad:
            service.add_alert("a", "   ")
        assert bad.value.status == 400
        with pytest.raises(ServiceError, match="threshold") as bad:
            service.add_alert("a", "a person", 3.0)
        assert bad.value.status == 400
        added = client.post("/v1/streams", json={"id": "f", "source": "a.mp4", "options": {"pace": 2.0}})
        assert added.status_code == 201, added.text
        always = client.post("/v1/alerts", json={"stream": "f", "rule": "a person", "threshold": 0.0})
        never = client.post("/v1/alerts", json={"stream": "f", "rule": "a cat", "threshold": 2.0})
        assert always.status_code == never.status_code == 201, always.text
        assert set(always.json()) == {"id", "stream", "rule", "threshold", "created", "segments_stored",
                                      "segments_checked", "fired", "skipped"}  # fmt: skip
        assert json.loads((Path(cluster.config.root) / "cluster.json").read_text())["alerts"]  # persisted
        cluster.wait(["f"], timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # checks run after the store; events reach the coordinator later
            service.poll_events()
            fired = [e for e in service.bus.recent(types={"alert"}) if e.data["stream"] == "f"]
            stored = [e for e in service.bus.recent(types={"segment"}) if e.data["stream"] == "f"]
            rules = {r["rule"]: r for r in client.get("/v1/alerts").json()["alerts"]}
            person = rules["a person"]
            done = person["segments_checked"] + person["skipped"] == person["segments_stored"] >= 1
            if done and len(fired) == person["fired"] and len(stored) >= person["segments_stored"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the alerts of f were not all checked and relayed within 60 s: {rules}")
        cat = rules["a cat"]
        assert person["fired"] == person["segments_checked"] >= 1  # the stub judge says yes to all
        assert cat["segments_stored"] == person["segments_stored"] and cat["segments_checked"] == cat["fired"] == 0
        assert len({e.data["id"] for e in stored}) == len(stored)  # each stored segment once
        event = fired[0].data
        assert event["rule"] == "a person" and event["answer"] == "yes" and event["end"] > event["start"] >= 0
        assert local_id(event["segment"])[0] == next(s["shard_no"] for s in cluster.streams() if s["id"] == "f")
        assert client.get(event["thumbnail"]).content[:2] == b"\xff\xd8"
        assert client.delete(f"/v1/alerts/{never.json()['id']}").status_code == 200
        gone = client.delete(f"/v1/alerts/{never.json()['id']}")
        assert gone.status_code == 404 and gone.json()["error"] == "unknown_alert"
        assert [r["rule"] for r in client.get("/v1/alerts").json()["alerts"]] == ["a person"]


@pytest.mark.ray
def test_the_coordinator_rebalances_on_its_own_clock(cluster, two_streams):
    before = cluster.ray.get(cluster.coordinator.snapshot.remote())
    held = cluster.stats()["tokens_held"]
    cap = held * 3 // 4
    cluster.ray.get(cluster.coordinator.set_cap.remote(cap))  # a new cap, and no rebalance() call
    cluster.set_rebalance_every(0.2)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = cluster.stats()
            if stats["tokens_held"] <= cap and all(stats["held"][s] <= n for s, n in stats["shares"].items()):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the shares were not applied within 60 s: {stats}")
    finally:
        cluster.set_rebalance_every(0)
    after = cluster.ray.get(cluster.coordinator.snapshot.remote())
    assert after["rebalances"] > before["rebalances"]
    assert sum(after["streams"][s]["share"] for s in after["streams"]) <= cap
    assert {s: r["share"] for s, r in after["streams"].items()} != {s: r["share"] for s, r in before["streams"].items()}
    caps = {st["id"]: st["token_cap"] for st in cluster.streams()}
    assert all(caps[s] == after["streams"][s]["share"] for s in after["streams"])  # applied by the actors


@pytest.mark.ray
def test_an_overtaken_rule_push_is_ignored_and_a_new_front_relays_only_new_events(cluster, two_streams, setup):
    pytest.importorskip("fastapi")
    from agents.cluster.service import ClusterService
    from agents.service.core import ServiceConfig

    made = cluster.add_alert("a", "a dog", 0.5)
    version, rules = cluster.ray.get(cluster.coordinator.alerts.remote())
    assert made["id"] in {r["id"] for r in rules}
    encoder = cluster.encoders[min(cluster.encoders)]
    cluster.ray.get(encoder.set_alerts.remote(version - 1, []))  # an older push, arriving late
    assert made["id"] in cluster.ray.get(encoder.alert_counts.remote())
    assert cluster.remove_alert(made["id"])
    assert made["id"] not in cluster.ray.get(encoder.alert_counts.remote())

    old = [("segment", {"stream": "x", "n": i}) for i in range(1500)]  # more than one page of events
    cluster.ray.get(cluster.coordinator.record.remote(old))
    service = ClusterService(cluster, ServiceConfig(media_roots=[setup["root"]]), event_poll=0).start()
    try:
        service.poll_events()
        assert not [e for e in service.bus.recent(types={"segment"}) if e.data["stream"] == "x"]  # none replayed
        cluster.ray.get(cluster.coordinator.record.remote([("segment", {"stream": "x", "n": -1})]))
        service.poll_events()
        relayed = [e.data["n"] for e in service.bus.recent(types={"segment"}) if e.data["stream"] == "x"]
        assert relayed == [-1]
    finally:
        service.close()
