"""The console scripts' entry points: ``damselfly`` and ``dfget``.

``dfget URL ...`` and ``damselfly get URL ...`` go straight to the lean parser in
:mod:`.dfget_args` without loading typer or the other subcommands (a download's
start-up is on its critical path); everything else loads the typer app.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["get"]:
        from .dfget_args import run

        sys.exit(run(argv[1:], prog="damselfly get"))
    from .main import main as typer_main

    typer_main()


def dfget_main() -> None:
    from .dfget_args import run

    sys.exit(run(sys.argv[1:], prog="dfget"))
