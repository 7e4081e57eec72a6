"""The ``streamvid`` command line: ``cli.main:app`` assembles the commands of ``cli.commands``
and ``cli.bench_commands``. Importing it imports no model, no torch."""
