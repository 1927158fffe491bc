"""`python -m hlmcli.cli.man man/hlmcli.1` rewrites the man page's OPTIONS BY GROUP section from the
command group (help.rewrite_man); a module of its own so that help.py need not import cli.py."""

if __name__ == "__main__":  # pragma: no cover
    import sys

    from . import main
    from .help import rewrite_man

    rewrite_man(sys.argv[1], main)
