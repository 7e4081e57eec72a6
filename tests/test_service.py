"""streamvid serve, in process: keys, streams, questions (JSON and SSE), segments and thumbnails,
metrics that move, alerts gated by novelty, restart without duplicates, and 50+ hostile
requests that each get the right 4xx while the service keeps serving."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("mcp")

import torch
from agent_helpers import color_video
from fastapi.testclient import TestClient
from media import server_script
from service_helpers import AUTH, KEY, load_llm, make_service, sse_events, wait_for
from test_ingest_live import free_port, start_server

from agents.service.alerts import AlertEngine
from agents.service.app import create_app
from agents.service.security import RateLimiter, ServiceError, check_bind, resolve_source
from memory import TokenMemory
from streamvid.types import CompressedSegment


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_llm(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    color_video(root / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)])
    color_video(root / "long.mp4", [("red", 10.0), ("green", 10.0), ("blue", 10.0), ("red", 10.0)])
    (root / "notes.txt").write_text("not a video")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.mp4").write_bytes((root / "colors.mp4").read_bytes())
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    return root


@pytest.fixture
def client(llm, media, tmp_path):
    service = make_service(llm, tmp_path / "mem", media)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        c.service = service
        yield c
    service.memory.close()


def finished(client, stream):
    body = client.get(f"/v1/streams/{stream}", headers=AUTH).json()
    return body if body["state"] in ("done", "complete", "error") else None


def ranges(memory_dir, stream="cam"):
    with TokenMemory(memory_dir, read_only=True) as reader:
        return [(s.segment_index, s.start, s.end, s.frame_count) for s in reader.timeline(stream)]


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    raise AssertionError(f"{name}{labels} not in /metrics")


# -- keys and the bind rule --------------------------------------------------------------------------


def test_open_routes_need_no_key_and_v1_needs_one(client):
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/metrics").status_code == 200
    assert client.get("/").status_code == 200 and "<title>streamvid</title>" in client.get("/").text
    for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": f"Basic {KEY}"}):
        r = client.get("/v1/streams", headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert client.get("/v1/streams", headers=AUTH).status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "streamvid"


def test_non_loopback_bind_needs_a_key():
    check_bind("127.0.0.1", [])
    check_bind("::1", [])
    check_bind("0.0.0.0", [KEY])
    with pytest.raises(ServiceError, match="refusing to listen on 0.0.0.0 without an API key"):
        check_bind("0.0.0.0", [])
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(
        app, ["serve", "--memory", "m-never-created", "--host", "0.0.0.0"], env={"STREAMVID_API_KEY": ""}
    )
    assert result.exit_code == 2 and "refusing to listen on 0.0.0.0" in result.output
    assert "Traceback" not in result.output and not os.path.exists("m-never-created")


# -- a file stream end to end --------------------------------------------------------------------------


def test_file_stream_segments_thumbnails_answers_and_metrics(client):
    r = client.post("/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "file" and r.json()["source"] == "colors.mp4"
    done = wait_for(lambda: finished(client, "cam"), what="the file to be ingested")
    assert done["state"] == "done" and done["error"] is None and done["segments"] >= 3
    listed = client.get("/v1/streams", headers=AUTH).json()
    assert [s["id"] for s in listed["streams"]] == ["cam"] and 0 < listed["tokens_held"] <= listed["token_cap"]
    segs = client.get("/v1/segments", params={"stream": "cam"}, headers=AUTH).json()["segments"]
    assert len(segs) == done["segments"] and segs[0]["start"] == 0.0
    assert all(a["end"] < b["start"] for a, b in zip(segs, segs[1:]))  # no overlap
    later = client.get("/v1/segments", params={"stream": "cam", "start": 5.0}, headers=AUTH).json()["segments"]
    assert later and all(s["end"] >= 5.0 for s in later) and len(later) < len(segs)
    thumb = client.get(segs[0]["thumbnail"], headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"  # a JPEG
    text = client.get("/metrics").text
    asked_before = metric(text, "streamvid_ask_seconds_count")
    assert metric(text, "streamvid_frames_total", '{stream="cam"}') == done["frames"]
    assert metric(text, "streamvid_stream_segments_total", '{stream="cam"}') == done["segments"]
    assert metric(text, "streamvid_encode_seconds_count") == done["segments"]
    assert metric(text, "streamvid_tokens_held") == listed["tokens_held"]
    answer = client.post("/v1/ask", json={"question": "What is red?", "max_visual_tokens": 64}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["segments"] and body["visual_tokens"] <= 64 and body["max_visual_tokens"] == 64
    assert {"retrieve", "prefill", "decode", "total"} <= set(body["timings"])
    used = body["segments"][0]
    assert set(used) >= {"stream", "start", "end", "score", "grain", "thumbnail"} and used["stream"] == "cam"
    text = client.get("/metrics").text
    assert metric(text, "streamvid_ask_seconds_count") == asked_before + 1
    assert client.get("/v1/streams").status_code == 401
    assert metric(client.get("/metrics").text, "streamvid_http_requests_total", '{status="401"}') == 1
    ranged = client.post("/v1/ask", json={"question": "What happened?", "time_range": [6.0, 9.0]}, headers=AUTH)
    assert ranged.status_code == 200 and all(u["end"] >= 6.0 for u in ranged.json()["segments"])


def test_streamed_answer_is_tokens_then_the_answer(client):
    client.post("/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH)
    wait_for(lambda: finished(client, "cam"), what="ingest")
    with client.stream("POST", "/v1/ask", json={"question": "What is green?", "stream": True}, headers=AUTH) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and set(kinds[:-1]) <= {"token"}
    answer = events[-1][1]
    assert "".join(d["text"] for k, d in events if k == "token").strip() == answer["text"]
    assert answer["segments"] and all(u["thumbnail"] for u in answer["segments"])


def test_delete_and_purge(client):
    client.post("/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH)
    wait_for(lambda: finished(client, "cam"), what="ingest")
    assert client.delete("/v1/streams/cam", headers=AUTH).json() == {"removed": "cam", "segments_purged": 0}
    assert client.get("/v1/streams/cam", headers=AUTH).status_code == 404
    assert client.get("/v1/segments", params={"stream": "cam"}, headers=AUTH).json()["segments"]  # kept
    assert client.delete("/v1/streams/cam?purge=true", headers=AUTH).json()["segments_purged"] > 0
    assert client.get("/v1/segments", headers=AUTH).json()["segments"] == []


def test_restart_resumes_the_file_with_the_clean_run_s_segments(llm, media, tmp_path):
    clean = make_service(llm, tmp_path / "clean", media)
    with TestClient(create_app(clean)) as c:
        c.post("/v1/streams", json={"id": "cam", "source": "long.mp4", "options": {"pace": 8}}, headers=AUTH)
        wait_for(lambda: finished(c, "cam"), what="the clean ingest")
    clean.memory.close()
    expected = ranges(tmp_path / "clean")
    first = make_service(llm, tmp_path / "mem", media)
    with TestClient(create_app(first)) as c:
        c.post("/v1/streams", json={"id": "cam", "source": "long.mp4", "options": {"pace": 8}}, headers=AUTH)
        wait_for(lambda: c.get("/v1/streams/cam", headers=AUTH).json()["segments"] >= 2, what="two segments")
    first.memory.close()  # shut down mid-file: the open segment is stored too, the file is not complete
    partial = ranges(tmp_path / "mem")
    assert 2 <= len(partial) < len(expected) and partial[:-1] == expected[: len(partial) - 1]
    second = make_service(llm, tmp_path / "mem", media)
    with TestClient(create_app(second)) as c:  # the stream list came back from service.sqlite
        status = wait_for(lambda: finished(c, "cam"), what="the resumed ingest")
        assert status["resumed_from"] == partial[-1][2] and status["skipped_frames"] > 0
    second.memory.close()
    after = ranges(tmp_path / "mem")
    assert after[: len(partial)] == partial and len(after) > len(partial)
    assert [r[0] for r in after] == list(range(len(after)))  # numbering continued, nothing twice
    assert all(a[2] < b[1] for a, b in zip(after, after[1:]))  # no time stored twice
    assert after[-1][2] == expected[-1][2]  # to the end of the file
    third = make_service(llm, tmp_path / "mem", media)
    with TestClient(create_app(third)) as c:
        assert wait_for(lambda: finished(c, "cam"))["state"] == "complete"  # nothing left to do
    third.memory.close()
    assert ranges(tmp_path / "mem") == after


# -- alerts -------------------------------------------------------------------------------------------------


def _segment(mean: torch.Tensor, frames: int = 2) -> CompressedSegment:
    return CompressedSegment(
        tokens=mean[None].float(),
        sizes=torch.tensor([frames]),
        positions=torch.zeros(1, 3, dtype=torch.long),
        times=torch.zeros(1),
        grid_size=(1, 1),
        frame_count=frames,
        start_time=0.0,
        end_time=1.0,
        mean_token=mean.float(),
        richness=0.0,
    )


def test_novelty_is_uniqueness_against_the_stream_s_running_mean(tmp_path):
    from agents.service.events import EventBus
    from agents.service.metrics import ServiceMetrics
    from agents.service.state import ServiceState

    engine = AlertEngine(ServiceState(tmp_path), EventBus(), ServiceMetrics(), lambda rule, seg: (True, "yes"))
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    assert engine.novelty("s", _segment(a)) == 1.0  # a stream's first segment is all new
    assert engine.novelty("s", _segment(a)) == pytest.approx(0.0, abs=1e-9)  # the same scene again
    assert engine.novelty("s", _segment(b)) == pytest.approx(1.0, abs=1e-9)  # orthogonal to the mean
    assert engine.novelty("other", _segment(a)) == 1.0  # per stream
    engine.close()


def test_alert_rules_check_only_novel_segments_and_fire_events(llm, media, tmp_path):
    def judge(rule, segment):
        return True, "yes"

    port = free_port()
    camera = start_server(server_script(tmp_path), port)
    service = make_service(llm, tmp_path / "mem", media, judge=judge, read_timeout=5)
    try:
        with TestClient(create_app(service), raise_server_exceptions=False) as c:
            r = c.post("/v1/streams", json={"id": "door", "source": f"tcp://127.0.0.1:{port}"}, headers=AUTH)
            assert r.status_code == 201, r.text
            always = c.post("/v1/alerts", json={"stream": "door", "rule": "a person", "threshold": 0.0}, headers=AUTH)
            never = c.post("/v1/alerts", json={"stream": "door", "rule": "a cat", "threshold": 2.0}, headers=AUTH)
            assert always.status_code == never.status_code == 201

            def counts():
                rules = {a["rule"]: a for a in c.get("/v1/alerts", headers=AUTH).json()["alerts"]}
                return rules if rules["a person"]["segments_checked"] >= 3 else None

            rules = wait_for(counts, 90, what="three checked segments")
            person, cat = rules["a person"], rules["a cat"]
            assert person["segments_checked"] <= person["segments_stored"] and person["fired"] >= 3
            assert cat["segments_stored"] >= 3 and cat["segments_checked"] == 0 and cat["fired"] == 0
            alerts = [e for e in c.get("/v1/events/recent", headers=AUTH).json()["events"] if e["type"] == "alert"]
            assert len(alerts) >= 3 and {a["data"]["rule"] for a in alerts} == {"a person"}
            fired = alerts[0]["data"]
            assert fired["stream"] == "door" and fired["end"] > fired["start"] >= 0
            assert c.get(fired["thumbnail"], headers=AUTH).content[:2] == b"\xff\xd8"
            text = c.get("/metrics").text
            assert metric(text, "streamvid_alerts_fired_total", '{stream="door"}') >= 3
            assert c.delete(f"/v1/alerts/{never.json()['id']}", headers=AUTH).status_code == 200
            assert c.delete(f"/v1/alerts/{never.json()['id']}", headers=AUTH).status_code == 404
    finally:
        camera.kill()
        camera.wait(10)
        service.memory.close()


# -- hostile requests --------------------------------------------------------------------------------------


def _hostile(media):
    big = "x" * (200 * 1024)
    ok = {"id": "cam", "source": "colors.mp4"}

    def chunks():
        for _ in range(100):
            yield b"a" * 1024

    a = AUTH
    j = {**AUTH, "Content-Type": "application/json"}
    return [
        ("no key", "GET", "/v1/streams", {}, 401),
        ("wrong key", "GET", "/v1/streams", {"headers": {"Authorization": "Bearer nope-nope-nope"}}, 401),
        ("basic auth scheme", "GET", "/v1/streams", {"headers": {"Authorization": f"Basic {KEY}"}}, 401),
        ("empty bearer", "GET", "/v1/streams", {"headers": {"Authorization": "Bearer "}}, 401),
        ("key in the query string", "GET", f"/v1/streams?key={KEY}", {}, 401),
        ("ask without key", "POST", "/v1/ask", {"json": {"question": "hi"}}, 401),
        ("mcp without key", "POST", "/mcp", {"json": {}}, 401),
        ("events without key", "GET", "/v1/events", {}, 401),
        ("bad JSON", "POST", "/v1/ask", {"content": b"{", "headers": j}, 400),
        ("JSON array body", "POST", "/v1/ask", {"json": ["question"], "headers": a}, 422),
        ("JSON null body", "POST", "/v1/ask", {"content": b"null", "headers": j}, 422),
        ("huge body", "POST", "/v1/ask", {"json": {"question": big}, "headers": a}, 413),
        (
            "lying Content-Length",
            "POST",
            "/v1/ask",
            {"content": b"{}", "headers": {**j, "Content-Length": "99999999"}},
            413,
        ),
        ("chunked huge body", "POST", "/v1/ask", {"content": chunks(), "headers": j}, 413),
        ("empty question", "POST", "/v1/ask", {"json": {"question": ""}, "headers": a}, 422),
        ("blank question", "POST", "/v1/ask", {"json": {"question": "   "}, "headers": a}, 400),
        ("question too long", "POST", "/v1/ask", {"json": {"question": "q" * 3000}, "headers": a}, 422),
        ("unknown field", "POST", "/v1/ask", {"json": {"question": "hi", "sudo": True}, "headers": a}, 422),
        (
            "stream id traversal in ask",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "streams": ["../x"]}, "headers": a},
            400,
        ),
        (
            "unknown stream in ask",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "streams": ["nosuch"]}, "headers": a},
            404,
        ),
        (
            "time range backwards",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "time_range": [5, 1]}, "headers": a},
            400,
        ),
        (
            "negative time range",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "time_range": [-1, 5]}, "headers": a},
            400,
        ),
        (
            "NaN in time range",
            "POST",
            "/v1/ask",
            {"content": b'{"question":"hi","time_range":[NaN,1]}', "headers": j},
            400,
        ),
        (
            "time range of strings",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "time_range": ["a", "b"]}, "headers": a},
            422,
        ),
        (
            "zero visual tokens",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "max_visual_tokens": 0}, "headers": a},
            422,
        ),
        (
            "negative visual tokens",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "max_visual_tokens": -5}, "headers": a},
            422,
        ),
        (
            "visual tokens as words",
            "POST",
            "/v1/ask",
            {"json": {"question": "hi", "max_visual_tokens": "lots"}, "headers": a},
            422,
        ),
        ("../ file source", "POST", "/v1/streams", {"json": {**ok, "source": "../../etc/passwd"}, "headers": a}, 403),
        ("absolute path outside", "POST", "/v1/streams", {"json": {**ok, "source": "/etc/passwd"}, "headers": a}, 403),
        (
            "symlink escaping the root",
            "POST",
            "/v1/streams",
            {"json": {**ok, "source": "escape.mp4"}, "headers": a},
            403,
        ),
        ("file:// URL", "POST", "/v1/streams", {"json": {**ok, "source": "file:///etc/passwd"}, "headers": a}, 400),
        ("ftp:// URL", "POST", "/v1/streams", {"json": {**ok, "source": "ftp://127.0.0.1/x.mp4"}, "headers": a}, 400),
        (
            "gopher:// URL",
            "POST",
            "/v1/streams",
            {"json": {**ok, "source": "gopher://127.0.0.1:70/"}, "headers": a},
            400,
        ),
        ("URL without host", "POST", "/v1/streams", {"json": {**ok, "source": "rtsp://"}, "headers": a}, 400),
        ("NUL byte in source", "POST", "/v1/streams", {"json": {**ok, "source": "colors\x00.mp4"}, "headers": a}, 400),
        ("not a video", "POST", "/v1/streams", {"json": {**ok, "source": "notes.txt"}, "headers": a}, 422),
        ("missing file", "POST", "/v1/streams", {"json": {**ok, "source": "nothere.mp4"}, "headers": a}, 404),
        ("empty source", "POST", "/v1/streams", {"json": {**ok, "source": ""}, "headers": a}, 400),
        ("stream id traversal", "POST", "/v1/streams", {"json": {**ok, "id": "../x"}, "headers": a}, 400),
        ("empty stream id", "POST", "/v1/streams", {"json": {**ok, "id": ""}, "headers": a}, 400),
        ("stream id too long", "POST", "/v1/streams", {"json": {**ok, "id": "a" * 65}, "headers": a}, 422),
        ("stream id with a space", "POST", "/v1/streams", {"json": {**ok, "id": "a b"}, "headers": a}, 400),
        ("stream id with markup", "POST", "/v1/streams", {"json": {**ok, "id": "<script>"}, "headers": a}, 400),
        ("stream id as a number", "POST", "/v1/streams", {"json": {**ok, "id": 5}, "headers": a}, 422),
        ("unknown option", "POST", "/v1/streams", {"json": {**ok, "options": {"shell": "rm"}}, "headers": a}, 422),
        ("delete unknown stream", "DELETE", "/v1/streams/nosuch", {"headers": a}, 404),
        ("delete with a bad id", "DELETE", "/v1/streams/a%20b", {"headers": a}, 400),
        ("thumbnail id not a number", "GET", "/v1/segments/abc/thumbnail.jpg", {"headers": a}, 422),
        ("thumbnail of no segment", "GET", "/v1/segments/999999/thumbnail.jpg", {"headers": a}, 404),
        ("negative segment start", "GET", "/v1/segments?start=-1", {"headers": a}, 422),
        (
            "alert on unknown stream",
            "POST",
            "/v1/alerts",
            {"json": {"stream": "nosuch", "rule": "x"}, "headers": a},
            404,
        ),
        (
            "alert threshold out of range",
            "POST",
            "/v1/alerts",
            {"json": {"stream": "cam", "rule": "x", "threshold": 5}, "headers": a},
            422,
        ),
        ("unknown route", "GET", "/v1/nosuch", {"headers": a}, 404),
        ("wrong method", "PUT", "/v1/streams", {"headers": a}, 405),
        ("static traversal", "GET", "/static/../../../etc/passwd", {}, 404),
    ]


def test_hostile_requests_get_the_right_4xx_and_the_service_keeps_serving(client, media, capsys):
    table = _hostile(media)
    assert len(table) >= 50
    got = []
    for name, method, path, kwargs, want in table:
        r = client.request(method, path, **kwargs)
        body = r.json()
        assert set(body) == {"error", "detail"} and "Traceback" not in r.text, (name, r.text)
        got.append((name, r.status_code, want))
    with capsys.disabled():
        print("\nhostile request -> status")
        for name, status, _ in got:
            print(f"  {name:32s} {status}")
    assert [(n, s) for n, s, _ in got] == [(n, w) for n, _, w in got]
    assert client.get("/healthz").status_code == 200  # still serving
    assert client.post("/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH).status_code == 201
    assert client.post("/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH).status_code == 409
    assert client.post("/v1/ask", json={"question": "What is blue?"}, headers=AUTH).status_code == 200


def test_an_unexpected_error_is_a_json_500_without_a_traceback(client, monkeypatch):
    def boom():
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.service, "snapshot", boom)
    r = client.get("/v1/streams", headers=AUTH)
    assert r.status_code == 500 and r.json()["error"] == "internal"
    assert "secret internals" not in r.text and "Traceback" not in r.text


def test_questions_are_rate_limited_per_key(llm, media, tmp_path):
    other = "second-key-abcdefgh"
    service = make_service(llm, tmp_path / "mem", media, keys=[KEY, other], ask_per_minute=2, ask_burst=2)
    with TestClient(create_app(service)) as c:
        codes = [c.post("/v1/ask", json={"question": "hi"}, headers=AUTH).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = c.post("/v1/ask", json={"question": "hi"}, headers=AUTH)
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
        assert (
            c.post("/v1/ask", json={"question": "hi"}, headers={"Authorization": f"Bearer {other}"}).status_code == 200
        )
    service.memory.close()


def test_rate_limiter_refills_with_time():
    now = [0.0]
    limiter = RateLimiter(60, burst=1, clock=lambda: now[0])
    limiter.take("k")
    with pytest.raises(ServiceError):
        limiter.take("k")
    now[0] += 1.0  # one request a second
    limiter.take("k")


def test_sources_resolve_inside_the_media_roots_only(media, tmp_path):
    assert resolve_source("colors.mp4", [media]).target == str((media / "colors.mp4").resolve())
    assert resolve_source(str(media / "colors.mp4"), [media]).kind == "file"
    assert resolve_source("rtsp://127.0.0.1:8554/cam", [media]).kind == "network"
    assert resolve_source("/dev/video0", [media]).kind == "webcam"
    for bad, status in (("escape.mp4", 403), ("../x.mp4", 403), ("colors.mp4", 403)):
        roots = [] if bad == "colors.mp4" else [media]
        with pytest.raises(ServiceError) as err:
            resolve_source(bad, roots)
        assert err.value.status == status
