"""`python -m starter …`: the same CLI as the `tapraise-calls` console script."""

from starter.cli import main

if __name__ == "__main__":
    main(prog_name="python -m starter")
