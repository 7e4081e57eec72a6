"""Sources, sampler and segmenter on generated files."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from media import audio_only, corrupt_copy, cuts_video, scene_frame, write_video

from streamvid.compress.dyseg import CutRule, streaming_boundaries
from streamvid.errors import (
    ConfigError,
    CorruptVideoError,
    DamagedVideoError,
    NoVideoStreamError,
    ShapeError,
    SourceError,
    SourceNotFoundError,
    TruncatedVideoError,
)
from streamvid.ingest import (
    FileSource,
    IngestPipeline,
    IterableSource,
    NetworkSource,
    Sampler,
    StreamingSegmenter,
    WebcamSource,
    open_source,
    thumbnail_feature,
)
from streamvid.ingest.sources import webcam_options

VFR_TIMES = [0.0, 0.1, 0.15, 0.9, 1.0, 1.05, 2.7, 2.71, 3.5, 5.0, 5.001, 7.25]


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    cuts = cuts_video(root / "cuts.mp4")
    faststart = cuts_video(root / "cuts_faststart.mp4")
    return {
        "cuts": cuts,
        "vfr": write_video(root / "vfr.mkv", VFR_TIMES, lambda t: scene_frame(0, t)),
        "long": write_video(
            root / "long.mkv",
            [i / 5 for i in range(5 * 180)],
            lambda t: scene_frame(int(t // 20), t),
            size=(32, 32),
            time_base=Fraction(1, 5),
        ),
        "corrupt": corrupt_copy(
            write_video(
                root / "fs.mp4",
                [i / 10 for i in range(100)],
                lambda t: np.random.default_rng(int(t * 10)).integers(0, 256, (96, 128, 3), dtype=np.uint8),
                container_options={"movflags": "faststart"},
            ),
            root / "corrupt.mp4",
            truncate=False,
        ),
        "truncated": corrupt_copy(cuts_video(root / "t.mkv"), root / "truncated.mkv", truncate=True),
        "audio": audio_only(root / "tone.wav"),
        "faststart": faststart,
        "root": root,
    }


def collect(source, **kwargs):
    segments = []
    stats = IngestPipeline(source, segments.append, **kwargs).run()
    return segments, stats


def test_cuts_become_segment_boundaries(media):
    segments, stats = collect(
        media["cuts"], sampler=Sampler(fps=2), segmenter=StreamingSegmenter(min_len=2, max_len=100)
    )
    assert [s.start_time for s in segments] == [0.0, 2.0, 5.0, 6.5]
    assert stats.frames_decoded == 80 and stats.frames_sampled == 16 and stats.frames_dropped == 0
    assert stats.segments == 4 and stats.frames_segmented == 16 and stats.pts_based
    times = torch.cat([s.timestamps for s in segments])
    assert torch.allclose(times, torch.arange(16, dtype=torch.float64) * 0.5)


def test_variable_frame_rate_timestamps_come_from_pts(media):
    decoded = [f.time for f in FileSource(media["vfr"]).frames()]
    assert decoded == pytest.approx(VFR_TIMES, abs=1e-9)
    sampler = Sampler(fps=2)
    kept = [t for t, _ in sampler(FileSource(media["vfr"]).frames())]
    assert kept == pytest.approx([0.0, 0.9, 1.0, 2.7, 3.5, 5.0, 7.25], abs=1e-9)


def test_sampler_resizes_once_to_max_size(media):
    sampler = Sampler(fps=None, max_size=64)
    (t, img), *_ = list(sampler(FileSource(media["cuts"]).frames()))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert sampler.target_size(1920, 1080) == (64, 36)
    assert Sampler(max_size=None).target_size(1920, 1080) == (1920, 1080)


def test_long_file_reads_in_full_without_seeking(media):
    segments, stats = collect(media["long"], sampler=Sampler(fps=1, max_size=None))
    assert stats.frames_decoded == 900
    assert stats.frames_sampled == 180
    assert segments[-1].end_time == pytest.approx(179.0)
    assert stats.media_seconds == pytest.approx(179.0)
    assert all(s.frames.shape[0] <= 16 for s in segments)


def test_corrupt_file_is_reported_and_strict_says_where(media):
    segments, stats = collect(media["corrupt"], sampler=Sampler(fps=None))
    assert stats.damaged and stats.decode_errors >= 1
    (hole,) = stats.holes
    assert hole.reason == "corrupt" and 1.0 < hole.start < hole.end < 9.0
    assert stats.frames_segmented == stats.frames_decoded  # the rest of the file was read

    segments = []
    with pytest.raises(DamagedVideoError, match="corrupt data at") as err:
        IngestPipeline(media["corrupt"], segments.append, sampler=Sampler(fps=None), strict=True).run()
    assert isinstance(err.value, CorruptVideoError) and err.value.holes == [hole]
    assert err.value.time == pytest.approx(hole.start)
    assert f"{err.value.time:.2f} s" in str(err.value)
    delivered = torch.cat([s.timestamps for s in segments])
    assert len(delivered) == err.value.frame
    assert float(delivered[-1]) == pytest.approx(err.value.time)


def test_truncated_file_is_reported_and_a_typed_error_when_strict(media):
    segments, stats = collect(media["truncated"], sampler=Sampler(fps=2))
    (hole,) = stats.holes
    assert hole.reason == "truncated" and hole.end == pytest.approx(8.0, abs=0.1)
    assert hole.describe().startswith(f"ends at {hole.start:.2f} s of ")
    segments = []
    with pytest.raises(TruncatedVideoError, match="truncated"):
        IngestPipeline(media["truncated"], segments.append, sampler=Sampler(fps=2), strict=True).run()
    assert segments and segments[0].start_time == 0.0


def test_bad_inputs_are_typed_errors(media, tmp_path):
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        open_source(tmp_path / "nope.mp4")
    assert issubclass(SourceNotFoundError, FileNotFoundError)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(NoVideoStreamError, match="is not a video"):
        list(FileSource(text).frames())
    with pytest.raises(NoVideoStreamError, match="audio"):
        list(FileSource(media["audio"]).frames())
    with pytest.raises(SourceError, match="directory"):
        FileSource(tmp_path)
    with pytest.raises(SourceError, match="cannot make a video source"):
        open_source(42)
    with pytest.raises(ConfigError):
        IngestPipeline(media["cuts"], print, drop_policy="drop_random")
    with pytest.raises(ConfigError):
        StreamingSegmenter(min_len=5, max_len=2)


def test_dead_url_is_a_typed_error():
    source = NetworkSource("tcp://127.0.0.1:9", open_timeout=1, read_timeout=1)
    with pytest.raises(SourceError, match="cannot connect"):
        list(source.frames())


def test_open_source_picks_the_right_kind(media):
    assert isinstance(open_source(str(media["cuts"])), FileSource)
    for url in ("rtsp://cam/stream", "http://host/live.m3u8", "udp://127.0.0.1:5000", "tcp://h:1"):
        assert isinstance(open_source(url), NetworkSource)
    assert open_source("rtsp://cam/stream").options["rtsp_transport"] == "tcp"
    assert isinstance(open_source("/dev/video0", width=640, height=480), WebcamSource)
    assert isinstance(open_source([np.zeros((4, 4, 3), np.uint8)]), IterableSource)
    assert webcam_options(640, 480, 30, "mjpeg") == {
        "video_size": "640x480",
        "framerate": "30",
        "input_format": "mjpeg",
    }
    with pytest.raises(ShapeError):
        webcam_options(640, None, None, None)


def test_missing_webcam_is_a_typed_error():
    with pytest.raises(SourceError):
        list(WebcamSource("/dev/video99").frames())


def test_iterables_with_and_without_timestamps():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(5)]
    src = IterableSource([(i * 0.25, f) for i, f in enumerate(frames)])
    assert [f.time for f in src.frames()] == [0.0, 0.25, 0.5, 0.75, 1.0] and src.pts_based
    bare = IterableSource(frames)
    times = [f.time for f in bare.frames()]
    assert not bare.pts_based and times == sorted(times)
    with pytest.raises(ShapeError, match="uint8"):
        list(IterableSource([np.zeros((4, 4))]).frames())
    with pytest.raises(ShapeError, match="backwards"):
        list(IterableSource([(1.0, frames[0]), (0.5, frames[1])]).frames())


def reference_cuts(features, tau_seg, min_len, max_len):
    """The streaming cut rule written out from its statement, frame by frame (no shared code)."""
    starts, open_len = [0], 1
    for i in range(1, len(features)):
        a, b = features[i - 1].double(), features[i].double()
        similarity = float(a @ b / (a.norm() * b.norm()))
        if open_len == max_len or (open_len >= min_len and similarity < tau_seg):
            starts.append(i)
            open_len = 0
        open_len += 1
    return [*starts, len(features)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_len,max_len", [(1, 3), (2, 16), (4, 6), (1, 1)])
def test_streaming_segmenter_equals_batch_rule(seed, min_len, max_len):
    rng = np.random.default_rng(seed)
    scenes = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(4)]
    order = rng.integers(0, 4, 40)  # frames switch scenes at random
    frames = [np.clip(scenes[k] + rng.normal(0, 6, scenes[k].shape), 0, 255).astype(np.uint8) for k in order]
    seg = StreamingSegmenter(tau_seg=0.9, min_len=min_len, max_len=max_len)
    starts = [0]
    count = 0
    for i, f in enumerate(frames):
        closed = seg.push(i * 0.5, f)
        if closed is not None:
            count += closed.frames.shape[0]
            starts.append(count)
    last = seg.flush()
    count += last.frames.shape[0]
    feats = torch.stack([thumbnail_feature(f) for f in frames])
    expected = reference_cuts(feats, 0.9, min_len, max_len)
    assert len(expected) > 2  # the clip really has cuts
    assert [*starts, count] == expected
    assert streaming_boundaries(feats, CutRule(tau_seg=0.9, min_len=min_len, max_len=max_len)) == expected
    assert seg.flush() is None


def test_progress_bar_runs(media, capsys):
    _, stats = collect(media["cuts"], sampler=Sampler(fps=2), progress=True)
    assert stats.frames_sampled == 16
    shown = capsys.readouterr().out
    assert "16 frames" in shown and f"{stats.segments} segments" in shown  # the final state is printed


def test_bench_ingest_command_reports_realtime_factor(media):
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["bench", "ingest", str(media["cuts"]), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert "x real time" in result.output and "16 sampled" in result.output
