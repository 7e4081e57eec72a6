"""RTSP against a real server on 127.0.0.1: Debian's rtsp-server-perl.

A publisher pushes MPEG-4 video into the server (RTSP ANNOUNCE/RECORD); the
pipeline reads it back as a client. This server relays RTP over UDP only, so the
client here uses rtsp_transport=udp (our default, TCP, is an option away).
"""

import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from media import rtsp_publisher_script
from test_ingest_live import Collector, free_port

from streamvid.ingest import IngestPipeline, NetworkSource, Sampler, StreamingSegmenter

pytestmark = pytest.mark.skipif(
    shutil.which("rtsp-server-perl") is None,
    reason="needs Debian's rtsp-server-perl (apt-get install rtsp-server-perl; .ci/run installs it)",
)


def wait_for_port(port: int, proc: subprocess.Popen, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            try:
                proc.wait(timeout=0.05)  # pause on the server process itself; fails fast if it died
                raise AssertionError(f"rtsp-server-perl exited with {proc.returncode}")
            except subprocess.TimeoutExpired:
                pass
    raise AssertionError(f"nothing listens on port {port}")


def test_rtsp_stream_from_a_real_server(tmp_path):
    client_port, server_port = free_port(), free_port()
    rtp_base = 30000 + 2 * (free_port() % 10000)
    server = subprocess.Popen(
        [
            "rtsp-server-perl",
            "--clientport",
            str(client_port),
            "--serverport",
            str(server_port),
            "--rtp_start_port",
            str(rtp_base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    publisher = None
    try:
        wait_for_port(server_port, server)
        wait_for_port(client_port, server)
        publisher = subprocess.Popen(
            [sys.executable, str(rtsp_publisher_script(tmp_path)), f"rtsp://127.0.0.1:{server_port}/cam"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        source = NetworkSource(
            f"rtsp://127.0.0.1:{client_port}/cam",
            open_timeout=3,
            read_timeout=3,
            options={"rtsp_transport": "udp"},
        )
        collector = Collector(want=3)
        pipeline = IngestPipeline(
            source,
            collector,
            sampler=Sampler(fps=None, max_size=None),
            segmenter=StreamingSegmenter(max_len=5),
            max_reconnects=20,
            reconnect_backoff=(0.2, 1.0),
        )
        pipeline.start()
        got = collector.enough.wait(60)
        pipeline.stop()
        pipeline.join(timeout=30)
        assert got, f"no RTSP segments; errors: {pipeline.stats.errors[-3:]}"
    finally:
        for proc in (publisher, server):
            if proc is not None:
                proc.kill()
                proc.wait(10)
    frames = collector.segments[0].frames
    assert frames.shape[1:] == (96, 128, 3)
    times = np.concatenate([s.timestamps.numpy() for s in collector.segments])
    assert bool((np.diff(times) > 0).all())
