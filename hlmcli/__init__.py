"""hlmcli: two-level hierarchical linear models from the command line, the HLM 7 way."""

__version__ = "0.1.0"
