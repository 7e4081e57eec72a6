"""Synthetic compressed segments for the memory tests (fast, no compressor needed)."""

from __future__ import annotations

import torch

from streamvid.types import CompressedSegment


def make_segment(
    n: int,
    *,
    frames: int = 4,
    grid: tuple[int, int] = (4, 4),
    dim: int = 16,
    seed: int = 0,
    stream: str = "cam",
    start: float = 0.0,
    index: int = 0,
    center: torch.Tensor | None = None,
    spread: float = 1.0,
) -> CompressedSegment:
    """n tokens standing for frames * h * w originals (sizes sum exactly), sorted in time."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    original = frames * h * w
    n = max(1, min(n, original))
    base = torch.zeros(dim) if center is None else center
    tokens = base + spread * torch.randn(n, dim, generator=gen)
    sizes = torch.ones(n, dtype=torch.long)
    if original > n:
        extra = torch.multinomial(torch.ones(n), original - n, replacement=True, generator=gen)
        sizes += torch.bincount(extra, minlength=n)
    t = torch.sort(torch.randint(0, frames, (n,), generator=gen)).values
    positions = torch.stack([t, torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)], 1)
    times = start + t.double()
    return CompressedSegment(
        tokens=tokens.half(),
        sizes=sizes,
        positions=positions,
        times=times,
        grid_size=grid,
        frame_count=frames,
        start_time=start,
        end_time=start + frames - 1,
        mean_token=(tokens * sizes[:, None]).sum(0) / original,
        richness=0.5,
        stream_id=stream,
        segment_index=index,
        method="synthetic",
    )


# A writer process: opens the memory at argv[1] for writing and adds synthetic segments of stream
# argv[2] whose times start at argv[3] + 4 * index, from index argv[4] on, printing each index.
# If another writer holds the memory it prints "LOCKED <pid> <message>" and exits with 3.
WRITER_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from memory import MemoryLockedError, TokenMemory
from memory_helpers import make_segment
from test_memory import key

root, stream, base, first = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
try:
    mem = TokenMemory(root, cap_tokens=400, index_save_every=4)
except MemoryLockedError as err:
    print("LOCKED", err.pid, str(err), flush=True)
    sys.exit(3)
print("OPEN", flush=True)
for i in range(first, first + 100_000):
    seg = make_segment(20 + i % 17, seed=i, start=base + 4.0 * i, index=i, stream=stream)
    mem.add(seg, key(i))
    print(i, flush=True)
"""


def check_rows_match_shards(root, base_of: dict[str, float]) -> int:
    """Zero corruption, from the files: every live manifest row's shard holds its token count,
    provenance sums and token times inside the row's [start, end]; each row's stream and time
    are those its writer gave that segment index (``base_of[stream] + 4 * index``).
    Returns the number of rows checked."""
    import sqlite3

    from memory import TokenMemory

    conn = sqlite3.connect(root / "manifest.sqlite")
    rows = conn.execute(
        'SELECT id, stream, seg_index, start, "end", n_tokens, original_tokens, status FROM segments'
    ).fetchall()
    conn.close()
    with TokenMemory(root, read_only=True) as mem:
        for sid, stream, index, start, end, n_tokens, original, status in rows:
            if stream not in base_of:
                raise AssertionError(f"segment {sid} has stream {stream!r}, which no writer wrote")
            if start != base_of[stream] + 4.0 * index or end != start + 3.0:
                raise AssertionError(f"segment {sid} ({stream} #{index}) is listed at {start}-{end} s")
            if status != "live":
                continue
            (seg,) = mem.get([sid])
            if not (seg.tokens.shape[0] == seg.sizes.shape[0] == seg.times.shape[0] == n_tokens):
                raise AssertionError(f"segment {sid}: {n_tokens} tokens listed, shard holds {seg.tokens.shape[0]}")
            if int(seg.sizes.sum()) != original:
                raise AssertionError(f"segment {sid}: sizes sum to {int(seg.sizes.sum())}, not {original}")
            if bool((seg.times < start).any()) or bool((seg.times > end).any()):
                raise AssertionError(
                    f"segment {sid} ({start}-{end} s) holds tokens at {seg.times.min()}-{seg.times.max()} s"
                )
    return len(rows)
