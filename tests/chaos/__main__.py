"""`python -m tests.chaos`: see the package's docstring."""

from tests.chaos.cli import main

main()
