"""``python -m damselfly``: the same as the ``damselfly`` command."""

from damselfly.cli.main import main

if __name__ == "__main__":
    main()
