"""``python -m damselfly``: the same as the ``damselfly`` command."""

from damselfly.cli.entry import main

if __name__ == "__main__":
    main()
