"""``streamvid cluster``: many cameras on a Ray cluster (agents/cluster, docs/scaling.md).

``run`` starts a local Ray (or joins one with ``--address auto``), starts the encoder actors, the
budget coordinator and the answering actor, adds the streams and waits for the file streams to
end (live ones run until Ctrl-C); ``--detach`` leaves the actors running for later ``ask``,
``status`` and ``stop`` commands against the same ``--address`` and ``--memory``. Ray is imported
inside the commands (the ``ray`` extra), so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.common import (
    CHECKS,
    DEFAULT_CAP,
    DEFAULT_MODEL,
    CliError,
    CompressorOpt,
    DeviceOpt,
    EmbedderOpt,
    FpsOpt,
    ModelOpt,
    RatioOpt,
    console,
    require,
    resolve_checkpoint,
)

__all__ = ["app", "parse_streams"]

app = typer.Typer(help="Run many cameras on a Ray cluster: encoder actors, memory shards, one answerer.",
                  no_args_is_help=True)  # fmt: skip

RootOpt = Annotated[Path, typer.Option("--memory", help="the cluster's memory root, on a filesystem every node mounts")]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray address: 'auto' joins the running cluster; none starts a local one")
]
JoinOpt = Annotated[str, typer.Option("--address", help="Ray address of the running cluster ('auto' or ray://...)")]


def parse_streams(items: list[str], file: Path | None) -> list[tuple[str, str]]:
    """``ID=SOURCE`` items and a file of ``ID SOURCE`` (or ``ID=SOURCE``) lines (# comments) -> pairs."""
    lines = list(items)
    if file is not None:
        if not file.is_file():
            raise CliError(f"--streams {file}: no such file", hint="one 'ID SOURCE' per line", exit_code=2)
        lines += [ln.split("#", 1)[0].strip() for ln in file.read_text().splitlines()]
    out: list[tuple[str, str]] = []
    for line in filter(None, lines):
        name, sep, source = line.partition("=") if "=" in line.split()[0] else line.partition(" ")
        if not sep or not name.strip() or not source.strip():
            raise CliError(f"stream {line!r}: expected ID=SOURCE (or 'ID SOURCE' in a file)", exit_code=2)
        out.append((name.strip(), source.strip()))
    ids = [n for n, _ in out]
    dupes = sorted({n for n in ids if ids.count(n) > 1})
    if dupes:
        raise CliError(f"stream id(s) {dupes} given twice; each stream needs its own id", exit_code=2)
    return out


def _status_lines(statuses: list[dict[str, Any]]) -> None:
    if not statuses:
        console.print("no streams")
    for s in statuses:
        extra = f", error: {s['error']}" if s.get("error") else ""
        console.print(
            f"{s['id']}: {s['state']} on encoder {s.get('encoder')}, {s.get('segments', '?')} segments, "
            f"{s.get('tokens_held', '?')} tokens of a {s.get('share')} share{extra}",
            soft_wrap=True,
        )


def _print_answer(answer: Any) -> None:
    console.print(f"[bold]{escape(answer.text)}[/]", soft_wrap=True)
    if answer.segments:
        used = ", ".join(
            f"{u.stream} {u.start:.1f}-{u.end:.1f}s [{u.tokens}/{u.stored_tokens}]" for u in answer.segments
        )
        console.print(f"segments used: {used}", soft_wrap=True)
    for stream, why in sorted(answer.unavailable.items()):
        console.print(f"unavailable: {stream} ({why})", soft_wrap=True)
    console.print(f"visual tokens: {answer.visual_tokens} of a budget of {answer.max_visual_tokens}", soft_wrap=True)


@app.command()
def run(
    memory: RootOpt,
    stream: Annotated[list[str] | None, typer.Option("--stream", help="ID=SOURCE (a file or a URL); repeat")] = None,
    streams: Annotated[Path | None, typer.Option("--streams", help="a file of 'ID SOURCE' lines")] = None,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: CompressorOpt = None,
    ratio: RatioOpt = None,
    fps: FpsOpt = None,
    cap_tokens: Annotated[
        int, typer.Option(help="the global cap over every shard (>= 1)", callback=CHECKS["positive_int"])
    ] = DEFAULT_CAP,
    address: AddressOpt = None,
    encoders: Annotated[int, typer.Option(help="encoder actors (>= 1)", callback=CHECKS["positive_int"])] = 1,
    cpus_per_encoder: Annotated[float, typer.Option(help="Ray CPUs per encoder actor")] = 1.0,
    gpus_per_encoder: Annotated[float, typer.Option(help="Ray GPUs per encoder actor (1 on a GPU cluster)")] = 0.0,
    answer_gpus: Annotated[float, typer.Option(help="Ray GPUs of the answering actor")] = 0.0,
    num_cpus: Annotated[float | None, typer.Option(help="CPUs of a local Ray (default: all)")] = None,
    device: DeviceOpt = None,
    max_len: Annotated[int, typer.Option(help="longest segment in sampled frames (>= 2)")] = 16,
    pace: Annotated[
        float | None, typer.Option(help="replay files at this many times real time, as cameras (default: at once)")
    ] = None,
    ask: Annotated[
        list[str] | None, typer.Option("--ask", help="a question once the file streams are in; repeat")
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", help="leave the actors running (needs --address)")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="return once the streams are started")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the file streams", min=1)] = 3600.0,
    rebalance_every: Annotated[
        float, typer.Option(help="seconds between the coordinator's cap rebalances (0: only when asked)", min=0)
    ] = 60.0,
) -> None:
    """Start (or join) a cluster, run the streams, wait for the files, answer --ask questions."""
    from agents.cluster import Cluster, ClusterConfig, StreamSpec

    pairs = parse_streams(stream or [], streams)
    require(not detach or address is not None, "--detach needs --address (a local Ray ends with this command)")
    require(max_len >= 2, "--max-len must be >= 2")
    model_path = resolve_checkpoint(model or DEFAULT_MODEL, "--model")
    emb = embedder or "none"
    emb_path = emb if emb.lower() == "none" else resolve_checkpoint(emb, "--embedder")
    config = ClusterConfig(
        root=str(memory.resolve()), model=model_path, embedder=emb_path, compressor=compressor or "infomerge",
        ratio=ratio or 0.15, fps=fps or 1.0, max_len=max_len, cap_tokens=cap_tokens, encoders=encoders,
        cpus_per_encoder=cpus_per_encoder, gpus_per_encoder=gpus_per_encoder, answer_gpus=answer_gpus,
        device=device or ("cuda" if gpus_per_encoder > 0 else "cpu"), rebalance_every=rebalance_every,
    )  # fmt: skip
    cluster = Cluster(config, address=address, num_cpus=num_cpus, detached=detach)
    try:
        cluster.set_rebalance_every(rebalance_every)  # also on a root whose coordinator kept another period
        known = {s["id"] for s in cluster.streams()}
        for name in sorted(known & {n for n, _ in pairs}):
            console.print(f"{name}: already in the cluster (resumes where its shard stopped)")
        new = [StreamSpec(name, source, pace=pace) for name, source in pairs if name not in known]
        if new:
            cluster.add_streams(new)
        if not no_wait:
            files = [s["id"] for s in cluster.streams() if not _is_live(s["source"])]
            cluster.wait(files, timeout=timeout)
            cluster.rebalance()
        _status_lines(cluster.streams())
        for question in ask or []:
            _print_answer(cluster.ask(question))
    finally:
        if not detach:
            cluster.shutdown()


def _is_live(source: str) -> bool:
    return "://" in source or source.startswith("/dev/video")


def _attach(memory: Path, address: str) -> Any:
    from agents.cluster import Cluster

    return Cluster.attach(str(memory.resolve()), address=address)


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="the question")],
    memory: RootOpt,
    address: JoinOpt = "auto",
    stream: Annotated[list[str] | None, typer.Option("--stream", help="only these streams; repeat")] = None,
    start: Annotated[float | None, typer.Option(help="only after this time (s)", callback=CHECKS["time"])] = None,
    end: Annotated[float | None, typer.Option(help="only before this time (s)", callback=CHECKS["time"])] = None,
    max_visual_tokens: Annotated[
        int | None, typer.Option(help="video tokens in the prompt (>= 1)", callback=CHECKS["positive_int"])
    ] = None,
) -> None:
    """Answer a question from every shard of a running cluster."""
    require(bool(question.strip()), "the question is empty; ask something about the video")
    time_range = None
    if start is not None or end is not None:
        lo, hi = start or 0.0, end if end is not None else 1e12  # no end: to the newest segment
        require(lo < hi, f"--start {lo:g} must come before --end {hi:g}")
        time_range = (lo, hi)
    cluster = _attach(memory, address)
    _print_answer(cluster.ask(question, streams=stream or None, time_range=time_range,
                              max_visual_tokens=max_visual_tokens))  # fmt: skip


@app.command()
def status(memory: RootOpt, address: JoinOpt = "auto") -> None:
    """The streams of a running cluster and the global cap."""
    cluster = _attach(memory, address)
    _status_lines(cluster.streams())
    stats = cluster.stats()
    console.print(f"tokens held: {stats['tokens_held']} of a global cap of {stats['token_cap']}")
    for name, why in sorted(stats["unavailable"].items()):
        console.print(f"unavailable: {name} ({why})", soft_wrap=True)


@app.command()
def stop(memory: RootOpt, address: JoinOpt = "auto") -> None:
    """Stop every stream (open segments stored) and end the cluster's actors."""
    cluster = _attach(memory, address)
    cluster.shutdown(stop_ray=False)
    console.print("stopped")
