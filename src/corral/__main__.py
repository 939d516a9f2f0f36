"""`python -m corral`: the `corral` command (corral.cli), as the console script runs it."""

from corral.cli import main

main()
