"""One writer per memory (an OS lock), readers that never write, stale locks of killed writers."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from memory_helpers import WRITER_SCRIPT, check_rows_match_shards, make_segment
from test_memory import check_consistent, key

from memory import (
    MemoryLockedError,
    MemoryNotFoundError,
    ReadOnlyMemoryError,
    TokenMemory,
    lock_holder,
)
from streamvid import ConfigError


def snapshot(root: Path) -> dict[str, str]:
    """path -> sha1 of every file of a memory, SQLite's -wal/-shm companions aside."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def start_writer(script: Path, root: Path, stream: str, base: float, first: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(root), stream, str(base), str(first)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_second_writer_fails_at_once_and_readers_take_no_lock(tmp_path):
    writer = TokenMemory(tmp_path, cap_tokens=100)
    writer.add(make_segment(10), key(0))
    with pytest.raises(MemoryLockedError) as err:
        TokenMemory(tmp_path)
    assert err.value.pid == os.getpid() and "\n" not in str(err.value) and "read_only=True" in str(err.value)
    with TokenMemory(tmp_path, read_only=True) as reader:  # readers open beside the writer
        assert [s.id for s in reader.timeline()] == [0]
        writer.add(make_segment(10, seed=1, start=5.0), key(1))
        assert len(reader.timeline()) == 2 and [s.budget for s in reader.get([1])] == [10]  # the manifest is live
        assert reader.search(key(1), k=2)[0][0].segment.id == 0  # the index is the open's snapshot ...
        reader.refresh()
        assert reader.search(key(1), k=1)[0][0].segment.id == 1  # ... until refresh()
        for write in (lambda: reader.add(make_segment(5), key(2)), reader.rebalance, lambda: reader.drop_stream("cam")):
            with pytest.raises(ReadOnlyMemoryError, match="read-only"):
                write()
    writer.close()
    with TokenMemory(tmp_path) as again:  # close() released the lock
        assert lock_holder(tmp_path) == os.getpid()
        check_consistent(again)


def test_read_only_opens_write_nothing(tmp_path):
    root = tmp_path / "mem"
    with TokenMemory(root, cap_tokens=60) as mem:
        for i in range(6):
            mem.add(make_segment(20, seed=i, start=4.0 * i, index=i), key(i))
    orphan = root / "shards" / "00000" / "000000099.v0.safetensors"
    orphan.write_bytes(b"left by a killed writer")
    (root / "index.IDMap2_Flat.faiss").unlink()  # a reader rebuilds it in memory only
    before = snapshot(root)
    with TokenMemory(root, read_only=True) as mem:
        assert mem.read_only and mem.settings.store.cap_tokens == 60
        hits = mem.search(key(5), k=2)
        assert hits[0][0].segment.id == 5
        live = [s.id for s in mem.timeline() if not s.evicted]
        assert sum(s.budget for s in mem.get(live)) == mem.stats().tokens_held <= 60
        mem.check_settings(model="other")  # validated, not saved
        mem.refresh()
    assert snapshot(root) == before
    with pytest.raises(ConfigError, match="read-only open uses the memory's stored settings"):
        TokenMemory(root, read_only=True, cap_tokens=10)
    with pytest.raises(MemoryNotFoundError, match="holds no streamvid memory"):
        TokenMemory(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()
    assert snapshot(root) == before
    with TokenMemory(root) as mem:  # the writer sweeps and saves
        assert not orphan.exists() and (root / "index.IDMap2_Flat.faiss").exists()
        check_consistent(mem)


def test_two_writer_processes_then_kill9_and_take_over(tmp_path):
    """Two writer processes race for one memory: exactly one writes, the other fails at once with
    the typed error naming the winner. The winner is killed with SIGKILL mid-ingest; a new writer
    takes over the stale lock. Every row then matches its shard and its writer's data."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests=str(Path(__file__).parent)))
    root = tmp_path / "mem"
    procs = {"A": start_writer(script, root, "A", 0.0), "B": start_writer(script, root, "B", 100_000.0)}
    first = {s: p.stdout.readline().split(maxsplit=2) for s, p in procs.items()}
    opened = [s for s, words in first.items() if words == ["OPEN"]]
    locked = [s for s, words in first.items() if words[:1] == ["LOCKED"]]
    assert len(opened) == 1 and len(locked) == 1, first
    winner, loser = procs[opened[0]], procs[locked[0]]
    assert loser.wait(timeout=60) == 3
    pid, message = first[locked[0]][1:]
    assert int(pid) == winner.pid
    assert message.strip() == (
        f"another streamvid process (pid {winner.pid}) is writing to {root}; stop it or use another --memory"
    )
    stored = [int(winner.stdout.readline()) for _ in range(12)]  # twelve adds returned
    with pytest.raises(MemoryLockedError, match=f"pid {winner.pid}"):  # nor can this process write
        TokenMemory(root)
    with TokenMemory(root, read_only=True) as reader:  # but it can read while the writer writes
        assert len(reader.timeline()) >= 12
    winner.send_signal(signal.SIGKILL)
    winner.wait(timeout=30)
    stored += [int(line) for line in winner.stdout.read().split()]  # every add that returned before the kill
    assert lock_holder(root) == winner.pid  # the note of a dead writer; the kernel freed the lock
    base_of = {"A": 0.0, "B": 100_000.0}
    with TokenMemory(root) as mem:  # takes the stale lock over, sweeps, repairs the index
        assert lock_holder(root) == os.getpid()
        check_consistent(mem)
        indices = sorted(s.segment_index for s in mem.timeline())
        assert indices[: len(stored)] == stored and len(indices) <= len(stored) + 1  # at most the one in flight
        assert len(stored) >= 12
        for i in range(indices[-1] + 1, indices[-1] + 4):  # and writes on, as the one writer
            mem.add(
                make_segment(20 + i % 17, seed=i, start=base_of[opened[0]] + 4.0 * i, index=i, stream=opened[0]), key(i)
            )
        check_consistent(mem)
    assert check_rows_match_shards(root, {opened[0]: base_of[opened[0]]}) == len(indices) + 3
    conn = sqlite3.connect(root / "manifest.sqlite")
    assert {r[0] for r in conn.execute("SELECT DISTINCT stream FROM segments")} == {opened[0]}
    conn.close()
