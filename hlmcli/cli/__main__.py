"""`python -m hlmcli.cli`: the same command as the `hlmcli` script."""

from . import main

main()
