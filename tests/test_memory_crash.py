"""kill -9 during ingest: the memory reopens consistent, losing at most the segment in flight."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from memory_helpers import check_rows_match_shards
from test_memory import check_consistent

from memory import TokenMemory

WRITER = r"""
import sys
sys.path.insert(0, {tests!r})
import torch
from memory import TokenMemory
from memory_helpers import make_segment
from test_memory import key

mem = TokenMemory(sys.argv[1], cap_tokens=150, index_save_every=4)
first = int(sys.argv[2])
for i in range(first, first + 100_000):
    mem.add(make_segment(25 + i % 20, seed=i, start=4.0 * i, index=i, stream="cam" + str(i % 2)), key(i))
    print(i, flush=True)
"""


def read_lines(proc, count, out):
    for _ in range(count):
        line = proc.stdout.readline()
        if not line:
            return
        out.append(int(line))


def test_sigkill_at_random_moments(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    mem_dir = tmp_path / "mem"
    rng = random.Random(7)
    next_index = 0
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(mem_dir), str(next_index)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        reported: list[int] = []
        reader = threading.Thread(target=read_lines, args=(proc, rng.randint(2, 12), reported))
        reader.start()
        reader.join(timeout=120)
        assert not reader.is_alive() and reported, "the writer produced nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with TokenMemory(mem_dir) as mem:
            check_consistent(mem)
            conn = sqlite3.connect(mem_dir / "manifest.sqlite")
            stored = {r[0] for r in conn.execute("SELECT seg_index FROM segments")}
            conn.close()
            # every add that returned is there; at most the one in flight is missing
            assert set(reported) <= stored
            assert max(stored) <= reported[-1] + 1
            next_index = max(stored) + 1
        # every row still matches its shard and the data its writer gave that index
        assert check_rows_match_shards(mem_dir, {"cam0": 0.0, "cam1": 0.0}) == len(stored)
