"""``python -m crmsync``: the same as the ``crmsync`` command."""

from crmsync.cli import main

# Guarded: worker processes (the parser pool) must never run the command again on import.
if __name__ == "__main__":
    main()
