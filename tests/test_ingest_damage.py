"""Damage is never silent: holes, early ends, unreadable files, zero-byte packets, reconnect waits.

Every file is generated here (tiny PyAV encodes), then damaged by overwriting bytes or cutting it.
"""

from fractions import Fraction

import av
import numpy as np
import pytest
from media import cut_at, noise_frame, overwrite_bytes, packets_in, scene_frame, write_theora, write_video

from streamvid.errors import (
    CorruptVideoError,
    DamagedVideoError,
    EmptyFileError,
    NoVideoStreamError,
    SourceError,
    StreamDisconnectedError,
    TruncatedVideoError,
)
from streamvid.ingest import (
    FileSource,
    IngestPipeline,
    RawFrame,
    Sampler,
    VideoSource,
    gap_threshold,
    open_source,
    probe_source,
)

FPS = 10
TIMES = [i / FPS for i in range(120)]  # 12 s


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A complete 12 s file per container (random pixels, so bytes track time)."""
    root = tmp_path_factory.mktemp("damage")
    return {ext: write_video(root / f"clean.{ext}", TIMES, noise_frame) for ext in ("mkv", "avi", "mp4")}


def ingest(path, **kwargs):
    segments = []
    stats = IngestPipeline(path, segments.append, sampler=Sampler(fps=2, max_size=None), **kwargs).run()
    return segments, stats


@pytest.mark.parametrize("ext", ["mkv", "avi", "mp4"])
def test_noise_mid_file_is_a_corrupt_hole_that_brackets_the_damage(clean, tmp_path, ext):
    damaged = tmp_path / f"noise.{ext}"
    a, b = overwrite_bytes(clean[ext], damaged, 0.4, 0.6)
    first, last = packets_in(clean[ext], a, b)  # the times whose bytes were overwritten

    segments, stats = ingest(damaged)
    assert stats.damaged and stats.holes[0].reason == "corrupt", stats.damage_summary()
    (hole,) = [h for h in stats.holes if h.end > first and h.start < last]
    # the hole runs from the last good frame before the damage to the first good one after it
    assert first - 1.0 <= hole.start <= first and last <= hole.end + 0.5 <= last + 1.5
    assert hole.errors + hole.skipped_bytes > 0
    assert hole.describe().startswith(f"corrupt data at {hole.start:.2f} s")
    assert all(h.reason != "truncated" for h in stats.holes)  # same classification in every container
    times = np.concatenate([s.timestamps.numpy() for s in segments])
    assert not ((times > hole.start + 0.05) & (times < hole.end - 0.05)).any()
    assert times[-1] == pytest.approx(TIMES[-1], abs=0.6)  # read past the damage to the end

    with pytest.raises(DamagedVideoError) as err:
        ingest(damaged, strict=True)
    assert isinstance(err.value, CorruptVideoError) and "\n" not in str(err.value)
    assert f"corrupt data at {hole.start:.2f} s" in str(err.value)
    assert err.value.holes[0] == hole


@pytest.mark.parametrize("ext", ["mkv", "avi"])
def test_cut_file_ends_before_its_declared_duration(clean, tmp_path, ext):
    cut = cut_at(clean[ext], tmp_path / f"cut.{ext}", 0.5)
    _, stats = ingest(cut)
    (hole,) = stats.holes
    assert hole.reason == "truncated" and hole.end == pytest.approx(TIMES[-1], abs=0.2)
    assert 4.0 < hole.start < 8.0
    assert hole.describe() == f"ends at {hole.start:.2f} s of {hole.end:.2f} s declared"
    with pytest.raises(TruncatedVideoError, match=r"ends at .* s of .* s declared"):
        ingest(cut, strict=True)


def test_mp4_cut_before_its_index_says_moov_and_how_to_fix(clean, tmp_path):
    cut = cut_at(clean["mp4"], tmp_path / "cut.mp4", 0.6)  # written without faststart: moov is at the end
    for call in (probe_source, lambda p: list(FileSource(p).frames())):
        with pytest.raises(TruncatedVideoError) as err:
            call(cut)
        message = str(err.value)
        assert "moov" in message and "truncated or unfinished" in message
        assert "ffmpeg -i in.mp4 -c copy -movflags +faststart out.mp4" in message and "\n" not in message


def test_empty_and_non_video_files_say_so_before_any_decode(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(EmptyFileError, match=r"empty\.mp4 is empty \(0 bytes\)"):
        probe_source(empty)
    assert issubclass(EmptyFileError, NoVideoStreamError)
    text = tmp_path / "notes.mp4"
    text.write_text("shopping list: milk, eggs\n" * 20)
    with pytest.raises(NoVideoStreamError, match="is not a video"):
        probe_source(text)


def test_probe_reports_basic_facts(clean):
    info = probe_source(clean["mkv"])
    assert (info.codec, info.width, info.height) == ("mpeg4", 128, 96)
    assert info.duration == pytest.approx(TIMES[-1], abs=0.2) and info.fps and not info.live
    assert "matroska" in info.container


def test_a_long_gap_in_timestamps_is_a_gap_not_corruption(tmp_path, caplog):
    times = [i / FPS for i in range(20)] + [5.0 + i / FPS for i in range(20)]  # nothing from 1.9 s to 5.0 s
    path = write_video(tmp_path / "gap.mkv", times, lambda t: scene_frame(0, t))
    with caplog.at_level("WARNING", logger="streamvid.ingest"):
        _, stats = ingest(path)
    (hole,) = stats.holes
    assert (hole.reason, hole.start, hole.end) == ("gap", pytest.approx(1.9), pytest.approx(5.0))
    assert stats.decode_errors == 0 and stats.skipped_bytes == 0
    assert [r.getMessage().count("gap in timestamps") for r in caplog.records] == [1]  # logged once, not silent
    with pytest.raises(DamagedVideoError, match="gap in timestamps: no frames from 1.90 to 5.00 s"):
        ingest(path, strict=True)
    with pytest.raises(DamagedVideoError):  # strict carried by the source, as the CLI opens it
        ingest(open_source(path, strict=True))
    assert gap_threshold(0.5) == 1.5 and gap_threshold(0.1) == 1.0  # 3 sampling intervals, at least 1 s
    short = write_video(tmp_path / "short_gap.mkv", [0.0, 0.5, 1.7, 2.2], lambda t: scene_frame(0, t))
    assert not ingest(short)[1].holes  # 1.2 s < 3 intervals of 0.5 s


def write_with_empty_packets(path, empty=(5, 6, 12)):
    """mpeg4 in NUT (which keeps zero-byte packets) with packets ``empty`` left empty, as Theora
    writes repeated frames."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, FPS)
        for i in range(20):
            if i in empty:
                packet = av.Packet(b"")
                packet.pts = packet.dts = i
                packet.time_base, packet.stream = Fraction(1, FPS), stream
                out.mux(packet)
                continue
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_zero_byte_packets_repeat_the_previous_frame_instead_of_errno_22(tmp_path):
    path = write_with_empty_packets(tmp_path / "empty_packets.nut")
    source = FileSource(path)
    frames = list(source.frames())
    assert source.damage.repeated_frames == 3 and not source.damage.holes
    assert len(frames) == 20 and [f.time for f in frames] == sorted(f.time for f in frames)
    by_time = {round(f.time * FPS): f for f in frames}
    assert np.array_equal(by_time[5].rgb(), by_time[4].rgb())  # the picture before, again


@pytest.mark.parametrize("ext", ["ogv", "ogg"])
def test_theora_with_dropped_frames_decodes(tmp_path, ext):
    """libtheora writes frames its rate control drops as zero-byte packets; PyAV's own
    ``container.decode`` sends them on and FFmpeg answers EINVAL (errno 22)."""
    path = write_theora(tmp_path / f"dropped.{ext}", frames=20, empty=(5, 6, 12))
    info = probe_source(path)
    assert (info.codec, info.width, info.height, info.fps) == ("theora", 64, 48, 10.0)
    source = FileSource(path)
    frames = list(source.frames())
    assert [round(f.time * FPS) for f in frames] == list(range(20))
    assert source.damage.repeated_frames == 3 and not source.damage.holes
    assert abs(int(frames[0].rgb().mean()) - 128) <= 4  # mid grey
    _, stats = ingest(path)
    assert stats.frames_decoded == 20 and stats.repeated_frames == 3 and not stats.damaged


@pytest.mark.skipif("libtheora" not in av.codecs_available, reason="this PyAV wheel has no Theora encoder")
@pytest.mark.parametrize("ext", ["ogv", "ogg"])
def test_theora_round_trip(tmp_path, ext):
    path = tmp_path / f"tiny.{ext}"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libtheora", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(scene_frame(i // 10, i / FPS, 64, 48), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    assert probe_source(path).codec == "theora"
    _, stats = ingest(path)
    assert stats.frames_decoded == 20 and not stats.holes


class FlakyLive(VideoSource):
    """A live source whose first ``failures`` connections fail at once, then one that yields 3 frames."""

    live = True
    reconnectable = True

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.connections = 0

    def frames(self):
        self.connections += 1
        if self.connections <= self.failures:
            raise SourceError(f"connection {self.connections} refused")
        for i in range(3):
            yield RawFrame(i * 0.1, 4, 4, lambda w, h: np.zeros((h, w, 3), np.uint8))


def test_reconnect_backoff_is_injectable_and_nothing_sleeps():
    waits = []
    source = FlakyLive(failures=4)
    stats = IngestPipeline(
        source, lambda s: None, reconnect_wait=waits.append, reconnect_backoff=(0.5, 2.0), max_reconnects=5
    ).run()
    assert waits == [0.5, 1.0, 2.0, 2.0]  # doubling, capped at the largest delay
    assert stats.reconnects == 4 and stats.frames_decoded == 3

    waits.clear()
    with pytest.raises(StreamDisconnectedError, match="gave up after 2 reconnect attempts"):
        IngestPipeline(
            FlakyLive(failures=10),
            lambda s: None,
            reconnect_wait=waits.append,
            reconnect_backoff=lambda n: n / 10,
            max_reconnects=2,
        ).run()
    assert waits == [0.1, 0.2]


class DamagedLive(VideoSource):
    live = True
    reconnectable = True
    connections = 0

    def frames(self):
        self.connections += 1
        yield RawFrame(0.0, 4, 4, lambda w, h: np.zeros((h, w, 3), np.uint8))
        raise DamagedVideoError("cam: corrupt data at 0.00 s", time=0.0)


def test_a_strict_hole_is_not_retried_like_a_dropped_connection():
    source = DamagedLive()
    waits = []
    pipeline = IngestPipeline(source, lambda s: None, reconnect_wait=waits.append, strict=True)
    with pytest.raises(DamagedVideoError, match="corrupt data at 0.00 s"):
        pipeline.run()
    assert source.connections == 1 and waits == [] and pipeline.stats.reconnects == 0
