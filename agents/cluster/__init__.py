"""streamvid on Ray: many cameras across GPUs and machines (docs/scaling.md).

::

    streams --sticky--> EncoderActor (one per GPU / N cores)        BudgetCoordinator (actor)
                        encode -> TFD -> compress -> shard writer    registry + global cap:
                        <root>/shards/<stream>/ (one writer each)    shares by CABA weights
                                      |  shared filesystem                 |
    question -> AnswerActor: embed -> search every shard (Ray tasks) -> global top-k merge
                             -> budgeted prefill (agents.qa.VideoQA) -> generate -> ClusterAnswer

:class:`Cluster` is the one object in front of it all (streams, questions, segments, the cap);
``streamvid cluster`` drives it and agents/cluster/service.py puts the REST service in front.
Ray is imported only by :mod:`agents.cluster.actors` (the ``ray`` extra); the rules of
:mod:`agents.cluster.plan` are pure.
"""

from agents.cluster.cluster import NAMESPACE, Cluster, require_ray
from agents.cluster.plan import (
    ClusterConfig,
    ShardSummary,
    StreamSpec,
    assign_streams,
    cap_shares,
    global_id,
    local_id,
    merge_hits,
    shard_dir,
    shard_weights,
)
from agents.cluster.shards import ShardedMemory, ShardRef, ShardUnavailableError

__all__ = [
    "NAMESPACE",
    "Cluster",
    "ClusterConfig",
    "ShardRef",
    "ShardSummary",
    "ShardUnavailableError",
    "ShardedMemory",
    "StreamSpec",
    "assign_streams",
    "cap_shares",
    "global_id",
    "local_id",
    "merge_hits",
    "require_ray",
    "shard_dir",
    "shard_weights",
]
