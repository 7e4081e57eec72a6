"""The pure parts of the cluster: its settings, stream specs, sticky assignment, the cap shares
of the budget coordinator and the global merge of per-shard hits. No Ray here, so every rule
is tested on its own (tests/test_cluster.py) and documented in docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamvid.compress.caba import allocate_budgets, caba_weights
from streamvid.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "ShardSummary",
    "StreamSpec",
    "assign_streams",
    "cap_shares",
    "check_rebalance_every",
    "global_id",
    "local_id",
    "merge_hits",
    "shard_dir",
    "shard_weights",
]

# a global segment id is (shard number << SHARD_BITS) | the shard's own id: unique across the
# cluster and below 2**53, so JSON clients read it exactly (up to 2**21 shards)
SHARD_BITS = 32
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class ClusterConfig:
    """How a cluster is built: the models (names as the CLI takes them: hub ids or local
    directories), the ingest settings every encoder actor uses, the memory root on a filesystem
    every node mounts at the same path, the global cap, and how many actors of which size.

    encoders: encoder actors to start; cpus_per_encoder / gpus_per_encoder: the Ray resources of
    each (one GPU each on a GPU cluster, N cores on CPU); answer_gpus: the answering actor's GPUs;
    search_cpus: the Ray CPUs of one shard-search task; max_restarts: how often Ray restarts a
    killed encoder actor (-1: always). cap_tokens: the global cap, shared across the shards by
    :func:`cap_shares`. rebalance_every: seconds between the coordinator's own rebalances of the
    cap shares (0: only when asked); a minute follows scenes that change over minutes, and a
    round costs one statistics task per shard (docs/scaling.md). alert_judge: the yes/no judge of
    alert rules, ``judge(rule, segment) -> (fired, text)`` (None: the encoder actor's Video-LLM,
    as one service does; another must pickle to the actors).
    """

    root: str
    model: str
    embedder: str = "none"
    compressor: str = "infomerge"
    ratio: float = 0.15
    fps: float = 1.0
    max_size: int = 448
    tau_seg: float = 0.9
    min_len: int = 2
    max_len: int = 16
    micro_batch: int = 8
    encoder_batch: int = 32
    device: str = "cpu"
    dtype: str | None = None
    cap_tokens: int = 200_000
    encoders: int = 1
    cpus_per_encoder: float = 1.0
    gpus_per_encoder: float = 0.0
    answer_cpus: float = 1.0
    answer_gpus: float = 0.0
    search_cpus: float = 0.5
    max_restarts: int = -1
    max_new_tokens: int = 128
    tau: float = 1.2
    alpha: float = 0.9
    beta: float = 0.1
    rebalance_every: float = 60.0
    alert_judge: Callable[[str, Any], tuple[bool, str]] | None = None

    def __post_init__(self) -> None:
        if self.encoders < 1:
            raise ConfigError("a cluster needs at least one encoder actor (encoders >= 1)")
        if self.cap_tokens < 1:
            raise ConfigError("cap_tokens must be >= 1")
        if not 0 < self.ratio <= 1:
            raise ConfigError("ratio must be in (0, 1]")
        if self.fps <= 0:
            raise ConfigError("fps must be > 0")
        check_rebalance_every(self.rebalance_every)

    @property
    def namespace_key(self) -> str:
        """A short name for this memory root, so clusters on different roots never share actors."""
        return hashlib.sha1(str(Path(self.root).resolve()).encode()).hexdigest()[:10]

    @property
    def actor_prefix(self) -> str:
        """The Ray name prefix of this root's actors: ``<prefix>-coordinator``,
        ``<prefix>-encoder-<slot>``, ``<prefix>-answer``."""
        return f"streamvid-{self.namespace_key}"


def check_rebalance_every(seconds: float) -> None:
    """A rebalance period: finite seconds >= 0 (0: only when asked), else a one-line ConfigError."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(
            f"rebalance_every must be a finite number of seconds >= 0 (0: only when asked), got {seconds!r}"
        )


@dataclass(frozen=True)
class StreamSpec:
    """One camera or file: its id, its source (a path or URL), live or not (None: from the
    source), and ``pace``: replay a file at this many times real time, as a camera would deliver
    it (None: as fast as it decodes)."""

    id: str
    source: str
    live: bool | None = None
    pace: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _STREAM_ID.fullmatch(self.id):
            raise ConfigError(
                f"stream id {self.id!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(f"stream {self.id!r} needs a source (a file path or a URL)")
        if self.pace is not None and not (math.isfinite(self.pace) and self.pace > 0):
            raise ConfigError(f"stream {self.id!r}: pace must be > 0")


def shard_dir(root: str | Path, stream: str) -> Path:
    """The memory shard of ``stream``: ``<root>/shards/<stream>`` (one writer: its encoder actor)."""
    return Path(root) / "shards" / stream


def global_id(shard_no: int, sid: int) -> int:
    return (int(shard_no) << SHARD_BITS) | int(sid)


def local_id(gid: int) -> tuple[int, int]:
    """-> (shard number, the shard's own segment id)."""
    return int(gid) >> SHARD_BITS, int(gid) & ((1 << SHARD_BITS) - 1)


def assign_streams(
    streams: Sequence[str], actors: Sequence[int], current: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Sticky assignment of streams to encoder actors. -> {stream: actor slot}.

    A stream stays on its actor while that actor exists; streams whose actor is gone, and new
    streams, go to the least-loaded actor (ties: the lower slot); then, while the most loaded
    actor holds two or more streams more than the least loaded, one of its streams (the last in
    ``streams`` order) moves over. So a new actor takes only the streams it needs to even the
    load, and a departed actor's streams spread over the rest; nothing else moves.
    """
    if not actors:
        raise ConfigError("no encoder actor to assign streams to; start at least one")
    slots = sorted(set(actors))
    current = dict(current or {})
    load: dict[int, list[str]] = {a: [] for a in slots}
    out: dict[str, int] = {}
    homeless = []
    for s in streams:
        a = current.get(s)
        if a in load:
            out[s] = a
            load[a].append(s)
        else:
            homeless.append(s)
    for s in homeless:
        a = min(slots, key=lambda x: (len(load[x]), x))
        out[s] = a
        load[a].append(s)
    while True:
        big = max(slots, key=lambda x: (len(load[x]), -x))
        small = min(slots, key=lambda x: (len(load[x]), x))
        if len(load[big]) - len(load[small]) < 2:
            return out
        moved = load[big].pop()
        load[small].append(moved)
        out[moved] = small


@dataclass(frozen=True)
class ShardSummary:
    """What the budget coordinator needs of one shard: the CABA statistics of its live segments
    (means [K, D], lengths, richness, token counts) and its running global sum and length (the
    memory's ``global_sum`` / ``global_len``, over every segment it ever stored)."""

    stream: str
    means: torch.Tensor
    lengths: torch.Tensor
    richness: torch.Tensor
    tokens: torch.Tensor
    global_sum: torch.Tensor | None
    global_len: float

    @property
    def held(self) -> int:
        return int(self.tokens.sum()) if self.tokens.numel() else 0


def shard_weights(
    summaries: Sequence[ShardSummary], *, tau: float = 1.2, alpha: float = 0.9, beta: float = 0.1
) -> dict[str, float]:
    """Each shard's CABA weight: the sum of its live segments' weights, the weights computed over
    every live segment of every shard at once against the cluster's global mean (the single
    memory's rule, docs/algorithms.md "Memory cap", applied to the union). Shards without live
    segments are left out."""
    full = [s for s in summaries if s.means.shape[0] > 0]
    if not full:
        return {}
    means = torch.cat([s.means.float() for s in full])
    lengths = torch.cat([s.lengths for s in full])
    rich = torch.cat([s.richness.double() for s in full])
    sums = [s.global_sum.double() for s in full if s.global_sum is not None]
    total_len = sum(s.global_len for s in full if s.global_sum is not None)
    glob = torch.stack(sums).sum(0) / total_len if sums and total_len > 1e-12 else None
    w = caba_weights(means, lengths, rich, tau=tau, alpha=alpha, beta=beta, global_mean=glob)
    out, start = {}, 0
    for s in full:
        k = s.means.shape[0]
        out[s.stream] = float(w[start : start + k].sum())
        start += k
    return out


def cap_shares(
    weights: Mapping[str, float],
    streams: Sequence[str],
    cap: int,
    *,
    held: Mapping[str, int] | None = None,
    done: Sequence[str] = (),
) -> dict[str, int]:
    """Split the global ``cap`` over the shards of ``streams`` by CABA weight. -> {stream: cap}.

    Shares are proportional to ``weights`` (a shard with no weight yet, a new stream, counts as
    the mean weight of the others, or 1 when none has one); a finished stream (in ``done``) needs
    no more than it ``held``, and what it leaves goes to the others (water filling). Every share is
    >= 1 and the shares sum to ``cap`` exactly (to less only when every shard is finished and
    holds less), so shards that each keep their own cap keep the cluster under the global one.
    """
    names = list(dict.fromkeys(streams))
    if not names:
        return {}
    if cap < len(names):
        raise ConfigError(f"a global cap of {cap} tokens cannot give {len(names)} shards one token each; raise it")
    known = [weights[s] for s in names if weights.get(s, 0) > 0]
    fill = sum(known) / len(known) if known else 1.0
    w = torch.tensor([weights.get(s, 0) if weights.get(s, 0) > 0 else fill for s in names], dtype=torch.float64)
    held = held or {}
    finished = set(done)
    capacity = torch.tensor([max(1, int(held.get(s, 0))) if s in finished else cap for s in names], dtype=torch.float64)
    total = min(cap, int(capacity.sum()))
    shares = allocate_budgets(w, total, capacity, minimum=1)
    return {s: int(b) for s, b in zip(names, shares.tolist())}


def merge_hits(per_shard: Sequence[Sequence[tuple[float, Any]]], k: int) -> list[tuple[float, Any]]:
    """The global top ``k`` of per-shard hit lists (each best first): by score, ties by the
    segment's (start, stream), as one exact search over the union ranks them up to ties."""
    merged = [h for hits in per_shard for h in hits]
    merged.sort(key=lambda h: (-h[0], getattr(h[1], "start", 0.0), getattr(h[1], "stream", "")))
    return merged[:k]
