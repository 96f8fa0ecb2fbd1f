"""``python -m advls``: the ``advls`` command, for environments without its console script."""

from advls.cli import app

if __name__ == "__main__":
    app(prog_name="advls")
