"""`python -m starter …`: the same CLI as the `tapraise-calls` console script."""

from starter.cli import app

if __name__ == "__main__":
    app(prog_name="python -m starter")
