"""The ``streamvid`` command, assembled in one place from the command modules.

Every error of every command ends here (:class:`StreamvidGroup`): one line on stderr, an
optional hint line, exit 2 for usage errors and 1 for runtime failures, the traceback
only with ``streamvid --debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import bench_commands, cluster_commands, commands, serve_commands
from cli.common import OPTIONS, configure_logging, report_error, restore_logging

__all__ = ["StreamvidGroup", "app", "main"]

HELP = "Ask questions about live camera feeds and very long videos."


class StreamvidGroup(TyperGroup):
    """The top-level command: runs a command line and turns any error into one line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        OPTIONS.debug = OPTIONS.verbose = False
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0  # typer returns an Exit's code here
        except BaseException as err:  # noqa: BLE001 - the one place errors become exit codes
            if isinstance(err, SystemExit):
                raise
            try:
                code = report_error(err)
            except Exception:  # noqa: BLE001 - never a traceback for a failed report
                print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
                code = 1
        finally:
            restore_logging()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(name="streamvid", help=HELP, no_args_is_help=True, cls=StreamvidGroup)


@app.callback()
def global_options(
    debug: Annotated[bool, typer.Option("--debug", help="print the traceback of an error")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="library warnings, model loading bars and info logs")
    ] = False,
) -> None:
    """Ask questions about live camera feeds and very long videos."""
    OPTIONS.debug, OPTIONS.verbose = debug, verbose
    configure_logging(verbose)


for command in (commands.ingest, commands.watch, commands.ask, commands.inspect, commands.demo):
    app.command()(command)
app.command("sample-video")(commands.sample_video)
app.command()(serve_commands.serve)
app.command()(serve_commands.mcp)
app.add_typer(bench_commands.app, name="bench")
app.add_typer(cluster_commands.app, name="cluster")


def main() -> None:
    app()
