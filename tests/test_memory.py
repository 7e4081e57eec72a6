import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_helpers import make_segment

from memory import (
    CorruptShardError,
    SegmentEvictedError,
    TokenMemory,
    UnknownSegmentError,
    plan_rebalance,
)
from streamvid import ConfigError, ShapeError, TokenGrid, create_compressor


def key(seed: int, dim: int = 8) -> torch.Tensor:
    k = torch.randn(dim, generator=torch.Generator().manual_seed(10_000 + seed))
    return k / k.norm()


def check_consistent(mem: TokenMemory) -> None:
    """Manifest, shards and index agree; the cap holds; provenance sums hold."""
    stats = mem.stats()
    assert stats.token_cap is None or stats.tokens_held <= stats.token_cap
    conn = sqlite3.connect(mem.root / "manifest.sqlite")
    rows = conn.execute("SELECT id, status, shard, n_tokens, original_tokens FROM segments").fetchall()
    conn.close()
    live = [r for r in rows if r[1] == "live"]
    for sid, _, _shard, n, original in live:
        (seg,) = mem.get([sid])
        assert seg.budget == n and int(seg.sizes.sum()) == original
    referenced = {r[2] for r in live}
    on_disk = {p.relative_to(mem.shards.root).as_posix() for p in mem.shards.root.rglob("*") if p.is_file()}
    assert on_disk == referenced  # no orphans, nothing missing
    if mem._index is None:  # nothing was ever added
        assert rows == []
        return
    assert sorted(mem._index.ids().tolist()) == sorted(r[0] for r in rows)
    assert sum(mem._live.tokens) == stats.tokens_held and len(mem._live) == len(live)
    # the cheap seams agree with the manifest
    assert mem.tokens_held == stats.tokens_held and mem.segment_counts() == (len(live), len(rows) - len(live))
    assert mem.streams() == stats.streams == sorted({s.stream for s in mem.timeline()})
    for stream in mem.streams():
        on_timeline = mem.timeline(stream)
        assert mem.newest(stream) == max(on_timeline, key=lambda s: (s.start, s.id))
        assert mem.end_time([stream]) == max(s.end for s in on_timeline)
        alive = [s for s in on_timeline if not s.evicted]
        assert mem.newest(stream, live_only=True) == (max(alive, key=lambda s: (s.start, s.id)) if alive else None)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cap=st.integers(3, 120),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 64), st.sampled_from(["a", "b"])),
            st.tuples(st.just("rebalance"), st.just(0), st.just("")),
        ),
        min_size=1,
        max_size=14,
    ),
)
def test_any_sequence_keeps_the_cap_provenance_and_evicted_keys(tmp_path_factory, cap, ops):
    mem = TokenMemory(tmp_path_factory.mktemp("mem"), cap_tokens=cap, index_save_every=3)
    added = []
    for i, (op, n, stream) in enumerate(ops):
        if op == "add":
            sid = mem.add(make_segment(n, seed=i, stream=stream, start=10.0 * i, index=i), key(i))
            added.append((sid, i))
        else:
            mem.rebalance()
        assert mem.stats().tokens_held <= cap
    check_consistent(mem)
    for sid, i in added:  # every segment, live or evicted, is still found by its own key
        (hits,) = mem.search(key(i), k=len(added))
        assert sid in [h.segment.id for h in hits]
    infos = {s.id: s for s in mem.timeline()}
    assert set(infos) == {sid for sid, _ in added}
    for s in infos.values():
        if s.evicted:
            with pytest.raises(SegmentEvictedError, match="nothing was retained"):
                mem.get([s.id])
    mem.close()


def test_plan_rebalance_budgets_sum_to_cap_and_never_grow():
    k, d = 30, 8
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(k, d, generator=gen)
    current = torch.randint(5, 60, (k,), generator=gen)
    plan = plan_rebalance(
        means, torch.full((k,), 4), torch.rand(k, generator=gen), current, 200, global_mean=means.mean(0).double()
    )
    assert int(plan.budgets.sum()) == 200 and bool((plan.budgets <= current).all())
    assert int(plan.targets.sum()) <= 200 and bool((plan.targets <= current).all())
    assert bool((plan.targets[plan.touched] == plan.budgets[plan.touched]).all())
    few = plan_rebalance(means, torch.full((k,), 4), torch.rand(k), current, 10, global_mean=means.mean(0).double())
    assert int(few.evict.sum()) == k - 10 and int(few.targets.sum()) == 10


def test_unique_segments_keep_more_tokens_than_repetitive_ones(tmp_path):
    mem = TokenMemory(tmp_path, cap_tokens=300)
    scene = torch.randn(16, generator=torch.Generator().manual_seed(1)) * 3
    ids = {}
    for i in range(24):
        unique = i in (5, 17)
        center = torch.randn(16, generator=torch.Generator().manual_seed(100 + i)) * 3 if unique else scene
        seg = make_segment(60, frames=8, seed=i, center=center, spread=0.3, start=8.0 * i, index=i)
        ids[mem.add(seg, key(i))] = unique
    tokens = {s.id: s.tokens for s in mem.timeline()}
    uniq = [tokens[i] for i, u in ids.items() if u]
    rep = [tokens[i] for i, u in ids.items() if not u]
    assert min(uniq) > max(rep)
    assert mem.stats().tokens_held <= 300


def test_real_compressed_segments_round_trip_after_reopen(tmp_path):
    comp = create_compressor("infomerge", ratio=0.25)
    gen = torch.Generator().manual_seed(2)
    with TokenMemory(tmp_path, cap_tokens=10_000) as mem:
        for i in range(6):
            grid = TokenGrid(
                torch.randn(8, 6, 6, 32, generator=gen), torch.arange(8.0) + 8 * i, stream_id="cam", segment_index=i
            )
            (seg,) = comp.compress(grid, boundaries=[0, 8])
            mem.add(seg, key(i))
        queries = torch.stack([key(i) for i in range(6)])
        before_hits = mem.search(queries, k=3)
        before = mem.get(range(6))
    with TokenMemory(tmp_path) as again:
        assert again.config.cap_tokens == 10_000
        assert again.search(queries, k=3) == before_hits
        after = again.get(range(6))
        for a, b in zip(before, after):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.sizes, b.sizes)
            assert torch.equal(a.positions, b.positions) and torch.equal(a.times, b.times)
            assert a.start_time == b.start_time and a.method == "infomerge"
        check_consistent(again)


def test_lowering_the_cap_at_reopen_rebalances(tmp_path):
    with TokenMemory(tmp_path, cap_tokens=1000) as mem:
        for i in range(10):
            mem.add(make_segment(50, seed=i, start=4.0 * i), key(i))
        assert mem.stats().tokens_held == 500
    with TokenMemory(tmp_path, cap_tokens=120) as mem:
        assert mem.stats().tokens_held <= 120
        check_consistent(mem)


def test_several_streams_search_within_and_across(tmp_path):
    with TokenMemory(tmp_path, cap_tokens=10_000) as mem:
        for i in range(8):
            mem.add(make_segment(10, seed=i, stream=f"cam{i % 2}", start=10.0 * i), key(i))
        (across,) = mem.search(key(3), k=8)
        assert across[0].segment.id == 3 and len(across) == 8
        (within,) = mem.search(key(3), k=8, streams=["cam0"])
        assert {h.segment.stream for h in within} == {"cam0"} and len(within) == 4
        (timed,) = mem.search(key(3), k=8, time_range=(22.0, 45.0))  # segment i spans [10i, 10i + 3]
        assert sorted(h.segment.id for h in timed) == [2, 3, 4]
        assert mem.search(key(3), k=3, streams=["nope"]) == [[]]
        assert [s.id for s in mem.timeline("cam1")] == [1, 3, 5, 7]
        assert mem.stats().streams == ["cam0", "cam1"]


def test_eviction_keeps_key_and_time_range(tmp_path):
    with TokenMemory(tmp_path, cap_tokens=3) as mem:
        for i in range(5):
            mem.add(make_segment(5, seed=i, start=10.0 * i), key(i))
        stats = mem.stats()
        assert stats.segments_live == 3 and stats.segments_evicted == 2 and stats.tokens_held == 3
        evicted = [s for s in mem.timeline() if s.evicted]
        (hits,) = mem.search(key(evicted[0].id), k=1, time_range=(evicted[0].start, evicted[0].end))
        assert hits[0].segment.evicted and hits[0].segment.id == evicted[0].id
        assert stats.last_rebalance is not None and stats.last_rebalance.evicted >= 1


def test_recency_half_life_favours_recent_segments(tmp_path):
    with TokenMemory(tmp_path, cap_tokens=200, recency_half_life_s=20.0) as mem:
        for i in range(10):
            mem.add(make_segment(60, seed=i, start=10.0 * i), key(i))
        tokens = [s.tokens for s in mem.timeline()]
        assert tokens[-1] > tokens[0]


def test_corrupt_shard_and_missing_index(tmp_path):
    with TokenMemory(tmp_path, cap_tokens=1000) as mem:
        for i in range(5):
            mem.add(make_segment(20, seed=i, start=5.0 * i), key(i))
        queries = torch.stack([key(i) for i in range(5)])
        expected = mem.search(queries, k=2)
    conn = sqlite3.connect(tmp_path / "manifest.sqlite")
    shard = conn.execute("SELECT shard FROM segments WHERE id = 2").fetchone()[0]
    conn.close()
    (tmp_path / "shards" / shard).write_bytes(b"\x00garbage" * 10)
    index_file = tmp_path / "index.IDMap2_Flat.faiss"
    index_file.unlink()
    with TokenMemory(tmp_path) as mem:
        assert mem.search(queries, k=2) == expected  # index rebuilt from the manifest
        with pytest.raises(CorruptShardError) as err:
            mem.get([2])
        assert err.value.segment_ids == [2] and "unreadable" in str(err.value)
        assert [s.budget for s in mem.get([0, 1, 3, 4])] == [20] * 4
    index_file.write_bytes(b"not an index")
    with TokenMemory(tmp_path) as mem:
        assert mem.search(queries, k=2) == expected


def test_bad_input_is_typed_and_stores_nothing(tmp_path):
    with pytest.raises(ConfigError, match="cap"):
        TokenMemory(tmp_path / "nocap")
    with pytest.raises(ConfigError, match="IDMap"):
        TokenMemory(tmp_path / "badindex", cap_tokens=5, index_factory="Flat")
    with TokenMemory(tmp_path / "m", cap_tokens=100) as mem:
        mem.add(make_segment(10), key(0))
        with pytest.raises(ShapeError, match="width 16"):
            mem.add(make_segment(10, dim=32), key(1))
        with pytest.raises(ShapeError, match="8 dims"):
            mem.add(make_segment(10), key(1, dim=4))
        with pytest.raises(ShapeError, match="finite"):
            mem.add(make_segment(10), torch.full((8,), float("nan")))
        with pytest.raises(ShapeError, match="8 dims"):
            mem.search(torch.randn(4))
        with pytest.raises(UnknownSegmentError):
            mem.get([99])
        assert mem.stats().segments_live == 1
        check_consistent(mem)


def test_one_writer_many_readers(tmp_path):
    mem = TokenMemory(tmp_path, cap_tokens=150)
    for i in range(3):
        mem.add(make_segment(30, seed=i, start=4.0 * i), key(i))
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def writer():
        try:
            for i in range(3, 40):
                mem.add(make_segment(30, seed=i, start=4.0 * i), key(i))
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            done.set()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                (hits,) = mem.search(key(int(rng.integers(0, 40))), k=4)
                live = [h.segment.id for h in hits if not h.segment.evicted]
                try:
                    for seg in mem.get(live):
                        assert int(seg.sizes.sum()) == seg.original_tokens  # never a torn segment
                        assert seg.tokens.shape[0] == seg.sizes.shape[0] == seg.positions.shape[0]
                except SegmentEvictedError:
                    pass  # evicted between search and get: a consistent answer
                assert mem.stats().tokens_held <= 150
                reads[0] += 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert reads[0] > 0
    check_consistent(mem)
    mem.close()


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "IDMap2,HNSW32,Flat"])
def test_index_from_a_later_state_is_repaired(tmp_path, factory):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    with TokenMemory(a, cap_tokens=1000, index_factory=factory) as mem:
        for i in range(5):
            mem.add(make_segment(10, seed=i, start=5.0 * i), key(i))
    shutil.copytree(a, b)
    with TokenMemory(a) as mem:
        for i in range(5, 8):
            mem.add(make_segment(10, seed=i, start=5.0 * i), key(i))
        index_file = mem._index_path()
    # b's manifest has 5 segments, its index file 8 keys (as after a rolled-back write)
    shutil.copy(index_file, b / index_file.name)
    with TokenMemory(b) as mem:
        check_consistent(mem)
        (hits,) = mem.search(key(2), k=3, time_range=(0.0, 100.0))
        assert hits[0].segment.id == 2 and all(h.segment.id < 5 for h in hits)


def test_byte_cap_bounds_the_token_payload(tmp_path):
    per_token = 16 * 2 + 40  # D = 16 in float16 + provenance
    with TokenMemory(tmp_path, cap_bytes=100 * per_token + 50) as mem:
        for i in range(12):
            mem.add(make_segment(30, seed=i, start=4.0 * i), key(i))
            stats = mem.stats()
            assert stats.token_cap == 100 and stats.tokens_held <= 100
            assert stats.bytes_held == stats.tokens_held * per_token <= 100 * per_token + 50
        assert stats.disk_bytes > stats.bytes_held
    with TokenMemory(tmp_path / "both", cap_tokens=60, cap_bytes=100 * per_token) as mem:
        mem.add(make_segment(30), key(0))
        assert mem.token_cap == 60  # the tighter cap wins


# -- settings: one typed store, in the manifest, validated, written by the writer only ------------------------


def meta(root) -> dict:
    conn = sqlite3.connect(root / "manifest.sqlite")
    rows = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    conn.close()
    return rows


def test_settings_live_in_one_place_and_old_memories_migrate(tmp_path):
    import json

    with TokenMemory(tmp_path, cap_tokens=100) as mem:
        mem.add(make_segment(10), key(0))
        assert (mem.settings.token_dim, mem.settings.key_dim, mem.settings.store.cap_tokens) == (16, 8, 100)
    stored = meta(tmp_path)
    assert "settings" in stored and not {"config", "dim", "key_dim"} & set(stored)
    # the layout of older versions: config and widths in three meta keys, the rest in streamvid.json
    conn = sqlite3.connect(tmp_path / "manifest.sqlite")
    settings = json.loads(stored["settings"])
    conn.execute("DELETE FROM meta WHERE k IN ('settings', 'schema_version')")
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("config", json.dumps(settings["store"])), ("dim", 16), ("key_dim", 8)]
    )
    conn.execute("DROP TABLE sources")
    conn.commit()
    conn.close()
    old = {"model": "m-old", "embedder": "e-old", "compressor": "tome", "ratio": 0.3, "fps": 2.0}
    (tmp_path / "streamvid.json").write_text(json.dumps(old))
    before = meta(tmp_path)
    with TokenMemory(tmp_path, read_only=True) as reader:  # reads both places, migrates nothing
        assert reader.settings.ingest() == old and reader.settings.token_dim == 16
        assert reader.source_progress("cam", "x") is None
    assert meta(tmp_path) == before and (tmp_path / "streamvid.json").exists()
    with TokenMemory(tmp_path) as mem:  # the writer moves everything into the one row
        assert mem.settings.ingest() == old and mem.settings.store.cap_tokens == 100
        check_consistent(mem)
    after = meta(tmp_path)
    assert not {"config", "dim", "key_dim"} & set(after) and int(after["schema_version"]) == 2
    assert json.loads(after["settings"])["model"] == "m-old" and not (tmp_path / "streamvid.json").exists()


def test_settings_are_validated_before_anything_is_saved(tmp_path):
    from cli.settings import DEFAULTS, resolve_settings
    from streamvid.errors import UnknownNameError

    with TokenMemory(tmp_path, cap_tokens=100) as mem:
        first = resolve_settings(mem, model="m", fps=2.0)
        assert first.ingest() == {**DEFAULTS, "model": "m", "fps": 2.0}
        saved = meta(tmp_path)["settings"]
        for bad, error in (
            ({"ratio": 2.0}, ConfigError),
            ({"fps": 0}, ConfigError),
            ({"compressor": "nope"}, UnknownNameError),
        ):
            with pytest.raises(error):
                resolve_settings(mem, **bad)
            assert meta(tmp_path)["settings"] == saved and mem.settings == first
        with pytest.raises(ConfigError, match="unknown memory settings"):
            mem.update_settings(cap_tokens=5)
    with TokenMemory(tmp_path, read_only=True) as reader:
        assert reader.settings == first
        asked = resolve_settings(reader, model="other")  # a reader validates, never saves
        assert asked.model == "other" and reader.settings.model == "m"
    assert meta(tmp_path)["settings"] == saved


def test_a_model_or_embedder_of_another_width_is_a_one_line_typed_error(tmp_path):
    from memory import SettingsConflictError

    with TokenMemory(tmp_path, cap_tokens=100) as mem:
        mem.check_widths(token_dim=32, key_dim=4)  # nothing stored yet: anything fits
        mem.update_settings(model="m16", embedder="e8")
        mem.add(make_segment(10), key(0))
        mem.check_widths(token_dim=16, key_dim=8, model="m16", embedder="e8")
        with pytest.raises(SettingsConflictError) as err:
            mem.check_widths(token_dim=32, model="m32")
        text = str(err.value)
        assert "\n" not in text and "width 16 (setting token_dim, from model 'm16')" in text
        assert "model 'm32' makes width 32" in text and "--model" in text and "--memory" in text
        with pytest.raises(SettingsConflictError, match=r"8 dims \(setting key_dim, from embedder 'e8'\).*--embedder"):
            mem.check_widths(key_dim=4, embedder="e4")
        with pytest.raises(ConfigError):  # also a ConfigError (and a ShapeError, as add() raised before)
            mem.add(make_segment(10, dim=32), key(1))
        assert mem.segment_counts() == (1, 0)


def test_cli_settings_are_validated_first_and_saved_only_by_the_writer(tmp_path):
    from cli.settings import DEFAULTS, resolve_settings
    from memory import MemoryLockedError

    new = tmp_path / "new"
    with TokenMemory(new, cap_tokens=10) as mem:
        with pytest.raises(ConfigError):  # rejected before anything is saved
            resolve_settings(mem, ratio=-1)
        assert mem.settings.ratio is None
        assert resolve_settings(mem, model="m", ratio=0.5).ingest() == {**DEFAULTS, "model": "m", "ratio": 0.5}
    before = meta(new)
    with TokenMemory(new, read_only=True) as reader:  # a reader validates but never saves
        assert resolve_settings(reader, fps=3.0).fps == 3.0
        with pytest.raises(ConfigError):
            resolve_settings(reader, fps=0)
    assert meta(new) == before
    with TokenMemory(new) as mem:
        assert mem.settings.model == "m" and mem.settings.fps == DEFAULTS["fps"]
        assert resolve_settings(mem, fps=3.0).fps == 3.0
    with TokenMemory(new, read_only=True) as reader:
        assert reader.settings.fps == 3.0
    script = "import sys; from memory import TokenMemory; m = TokenMemory(sys.argv[1]); print(1, flush=True); input()"
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(new)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "1"
        with pytest.raises(MemoryLockedError, match=f"pid {other.pid}"):  # another process writes: fail at once
            TokenMemory(new)
        with TokenMemory(new, read_only=True) as reader:  # readers stay concurrent
            assert reader.settings.model == "m"
    finally:
        other.kill()
        other.wait(timeout=30)


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "IDMap2,HNSW32,Flat"])
def test_drop_stream_removes_its_segments_and_progress_in_one_step(tmp_path, factory):
    with TokenMemory(tmp_path, cap_tokens=5, index_factory=factory) as mem:
        for i in range(8):
            mem.add(make_segment(30, seed=i, stream="ab"[i % 2], start=4.0 * i, index=i), key(i), source=f"src{i % 2}")
        assert mem.stats().segments_evicted > 0
        assert mem.source_progress("a", "src0").last_time == 4.0 * 6 + 3 and not mem.ingest_complete("a", "src0")
        mem.mark_source("a", "src0")
        assert mem.ingest_complete("a", "src0") and [p.stream for p in mem.sources()] == ["a", "b"]
        assert mem.drop_stream("a") == 4
        assert mem.streams() == ["b"] and mem.source_progress("a", "src0") is None
        check_consistent(mem)
        (hits,) = mem.search(key(0), k=8)
        assert {h.segment.stream for h in hits} == {"b"}
        mem.add(make_segment(30, seed=20, stream="a", start=100.0, index=0), key(20))
        check_consistent(mem)
    with TokenMemory(tmp_path) as mem:
        assert mem.add(make_segment(10, seed=21, stream="c", start=200.0), key(21)) == 9  # ids are never reused
        check_consistent(mem)


def test_set_cap_is_saved_and_enforced_at_once(tmp_path):
    """A smaller cap re-merges at once and survives a reopen; a larger one grows nothing back;
    a bad cap is a ConfigError that changes nothing."""
    mem = TokenMemory(tmp_path / "m", cap_tokens=1000, dtype="int8")
    for i in range(10):
        mem.add(make_segment(50, seed=i, start=4.0 * i, index=i), torch.nn.functional.normalize(torch.randn(8), dim=0))
    assert mem.tokens_held == 500
    report = mem.set_cap(cap_tokens=200)
    assert report is not None and report.cap == 200 and mem.tokens_held <= 200
    assert mem.config.dtype == "int8"  # the rest of the config kept
    held = mem.tokens_held
    assert mem.set_cap(cap_tokens=5000) is None and mem.tokens_held == held
    with pytest.raises(ConfigError, match="cap"):
        mem.set_cap(cap_tokens=0)
    with pytest.raises(ConfigError, match="cap"):
        mem.set_cap()
    mem.set_cap(cap_tokens=300)
    mem.close()
    again = TokenMemory(tmp_path / "m")
    assert again.token_cap == 300 and again.tokens_held == held and again.config.dtype == "int8"
    again.close()
