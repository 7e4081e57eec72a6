"""Live mode: a loopback MPEG-TS stream that dies, and a consumer that falls behind.

Every wait has a timeout; no sleeps wait for threads.
"""

import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from media import server_script

from streamvid.errors import StreamDisconnectedError
from streamvid.ingest import IngestPipeline, IterableSource, NetworkSource, Sampler, StreamingSegmenter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(script, port):
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE, text=True)
    ready = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), ready.set()), daemon=True).start()
    assert ready.wait(30), "stream server did not start"
    return proc


class Collector:
    def __init__(self, want: int):
        self.segments = []
        self.want = want
        self.enough = threading.Event()

    def __call__(self, segment):
        self.segments.append(segment)
        if len(self.segments) >= self.want:
            self.enough.set()


def live_pipeline(port, collector, max_reconnects):
    source = NetworkSource(f"tcp://127.0.0.1:{port}", open_timeout=2, read_timeout=2)
    return IngestPipeline(
        source,
        collector,
        sampler=Sampler(fps=None, max_size=None),
        segmenter=StreamingSegmenter(max_len=5),
        max_reconnects=max_reconnects,
        reconnect_backoff=(0.1, 0.4),
    )


def test_live_stream_killed_gives_reconnects_then_typed_error(tmp_path):
    port = free_port()
    server = start_server(server_script(tmp_path), port)
    collector = Collector(want=3)
    pipeline = live_pipeline(port, collector, max_reconnects=5)
    pipeline.start()
    try:
        assert collector.enough.wait(30), "no segments from the live stream"
    finally:
        server.kill()
        server.wait(10)
    with pytest.raises(StreamDisconnectedError, match="gave up after 5 reconnect attempts") as err:
        pipeline.join(timeout=60)
    assert err.value.attempts == 5
    assert pipeline.error is err.value  # the public seam live sessions report
    assert pipeline.stats.reconnects >= 5
    assert not pipeline.running
    times = np.concatenate([s.timestamps.numpy() for s in collector.segments])
    assert len(times) >= 15 and bool((np.diff(times) > 0).all())


def test_live_stream_resumes_after_server_restart(tmp_path):
    port = free_port()
    script = server_script(tmp_path)
    server = start_server(script, port)
    collector = Collector(want=2)
    pipeline = live_pipeline(port, collector, max_reconnects=50)
    pipeline.start()
    try:
        assert collector.enough.wait(30)
        server.kill()
        server.wait(10)
        collector.want = len(collector.segments) + 4
        collector.enough.clear()
        server = start_server(script, port)
        assert collector.enough.wait(60), "ingest did not resume after the stream came back"
    finally:
        pipeline.stop()
        server.kill()
        server.wait(10)
    stats = pipeline.join(timeout=30)
    assert stats.reconnects >= 1 and not pipeline.running
    times = np.concatenate([s.timestamps.numpy() for s in collector.segments])
    assert bool((np.diff(times) > 0).all())  # the clock continues across the reconnect


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_slow_consumer_never_blocks_a_live_source(policy):
    total = 300
    produced_all = threading.Event()

    def camera():
        for i in range(total):
            yield i * 0.04, np.full((16, 16, 3), i % 256, np.uint8)
        produced_all.set()

    delivered = []

    def slow_stage(segment):
        # the downstream stage is stuck until the camera has produced every frame:
        # if the source were ever blocked by it, this wait would time out
        assert produced_all.wait(timeout=30), "the source was blocked by the consumer"
        delivered.extend(segment.timestamps.tolist())

    pipeline = IngestPipeline(
        IterableSource(camera(), live=True),
        slow_stage,
        sampler=Sampler(fps=None, max_size=None),
        segmenter=StreamingSegmenter(tau_seg=-1.0, min_len=1, max_len=4),
        queue_size=8,
        drop_policy=policy,
    )
    stats = pipeline.run()
    assert produced_all.is_set()
    assert stats.frames_sampled == total
    assert stats.frames_dropped > 0
    assert stats.frames_dropped + len(delivered) == total  # every frame delivered or counted
    assert delivered == sorted(delivered)
    last = round(delivered[-1] / 0.04)
    if policy == "drop_oldest":
        assert last == total - 1  # the newest frames survive
    else:
        assert last < total - 1  # arrivals were discarded; what was queued survives
        assert [round(t / 0.04) for t in delivered[:4]] == [0, 1, 2, 3]  # kept in arrival order


def test_stop_from_another_thread_is_clean():
    stop_seen = threading.Event()

    def endless():
        i = 0
        while True:
            yield i * 0.1, np.zeros((8, 8, 3), np.uint8)
            i += 1

    segments = []

    def stage(segment):
        segments.append(segment)
        stop_seen.set()

    pipeline = IngestPipeline(
        IterableSource(endless(), live=True),
        stage,
        sampler=Sampler(fps=None, max_size=None),
        segmenter=StreamingSegmenter(max_len=3),
    )
    pipeline.start()
    assert stop_seen.wait(30)
    pipeline.stop()
    stats = pipeline.join(timeout=30)
    assert not pipeline.running and stats.segments >= 1
    assert not any(t.name.startswith("streamvid-") and t.is_alive() for t in threading.enumerate())
