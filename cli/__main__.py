"""``python -m cli``: the same command as the installed ``streamvid``."""

from cli.main import main

main()
