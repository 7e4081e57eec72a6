"""The ``streamvid`` command, assembled in one place from the command modules."""

from __future__ import annotations

import typer

from cli import bench_commands, commands

__all__ = ["app", "main"]

app = typer.Typer(help="Ask questions about live camera feeds and very long videos.", no_args_is_help=True)
for command in (commands.ingest, commands.watch, commands.ask, commands.inspect, commands.demo):
    app.command()(command)
app.command("sample-video")(commands.sample_video)
app.add_typer(bench_commands.app, name="bench")


def main() -> None:
    app()
