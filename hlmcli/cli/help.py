"""`--help` that teaches: options in groups and examples that run on sample_data/.

The groups and examples live here, once: `hlmcli --help` prints them and tests/test_docs.py checks
the man page against them option by option, so the two cannot drift apart.
"""

from __future__ import annotations

import click

# Group of each option, by its longest name. An option of a command that is in no group is listed
# under "Other options" (tests/test_docs.py keeps that list empty for every command).
GROUPS: dict[str, tuple[str, ...]] = {
    "Data": ("--id", "--id1", "--id2", "--id3", "--id4", "--row-id", "--col-id", "--l1-vars", "--l2-vars",
             "--l3-vars", "--l4-vars", "--missing", "--drop-unmatched", "--data-format", "--format", "--delimiter", "--template",
             "--cache-dir", "--older-than", "--keep", "--no-follow", "--verify"),
    "Model": ("--level1", "--level2", "--level3", "--level4", "--model", "--formula", "--tau", "--ascii"),
    "Estimation": ("--ml", "--reml", "--max-iterations", "--emulate", "--df", "--test", "--constrain", "--known-variance", "--level1-variance", "--level1-covariance", "--occasion", "--compare-deviance", "--compare-params",
                   "--prior-version", "--test-homogeneity", "--strict"),
    "HGLM": ("--family", "--trials", "--exposure", "--overdispersion", "--estimation", "--quadrature-points",
             "--separation", "--link"),
    "Survey": ("--weight1", "--weight2", "--weight3", "--weight4", "--normalize", "--plausible-values", "--imputed",
               "--allow-unequal-imputations"),
    "Output": ("--output", "--json-out", "--se", "--stars", "--caption", "--notes", "--title", "--timestamp",
               "--residuals-l1", "--residuals-l2", "--residuals-l3", "--residuals-l4", "--hlm-names",
               "--full-output", "--ols-units", "--quiet", "--keep-failed-output", "--force", "--allow-outside",
               "--names", "--x", "--by", "--coef", "--sample", "--seed", "--x-range", "--unit"),
    "Engine": ("--engine", "--scheduler", "--timeout", "--deadline"),
}

# `--format` is the data format for `mdm build` but the output format elsewhere
OUTPUT_FORMAT_COMMANDS = ("fit", "table", "compare", "explain", "mdm info")

EXAMPLES: dict[str, str] = {
    "fit": """\
Examples (in sample_data/):

\b
  hlmcli fit hsb/hsb1.csv hsb/hsb2.csv --id ID \\
      -1 'MATHACH = b0 + b1*group(SES) + r' \\
      -2 'b0 = g00 + g01*SECTOR + u0' -2 'b1 = g10 + g11*SECTOR + u1'
  hlmcli fit hsb/hsb1.csv hsb/hsb2.csv --id ID \\
      --formula 'MATHACH ~ SECTOR*group(SES) + (group(SES) | ID)' --format markdown
  hlmcli fit hsb.mdm --model models/m4_slopes.txt --ml --residuals-l2 res2.sav --hlm-names
""",
    "mdm build": """\
Examples (in sample_data/):

\b
  hlmcli mdm build hsb/hsb1.csv hsb/hsb2.csv --id ID -o hsb.mdm
  hlmcli mdm build eg/eg_l1.csv eg/eg_l2.csv eg/eg_l3.csv --id2 CHILDID --id3 SCHOOLID -o eg.mdm
  hlmcli mdm build --template eg/eg.mdmt
""",
    "plot": """\
Examples (in sample_data/):

\b
  hlmcli plot caterpillar hsb.mdm --model models/m4_slopes.txt -o caterpillar.png
  hlmcli plot eb-ols hsb.mdm --model models/m4_slopes.txt --coef SES -o eb_ols.svg
  hlmcli plot equation hsb.mdm --model models/m4_slopes.txt --by SECTOR -o equation.png
""",
    "table": """\
Examples (fits saved with 'hlmcli fit ... --format json -o m1.json'):

\b
  hlmcli table m1.json m2.json --names 'Null,Full' --stars
  hlmcli table m1.json m2.json --format latex --caption 'Mathematics achievement' -o table.tex
""",
}


def group_of(name: str, command_path: str) -> str:
    if name == "--format" and command_path in OUTPUT_FORMAT_COMMANDS:
        return "Output"
    return next((group for group, names in GROUPS.items() if name in names), "Other")


def option_name(param: click.Parameter) -> str:
    return max(param.opts, key=len)


def grouped_options(command: click.Command, command_path: str) -> dict[str, list[click.Option]]:
    """The command's options in GROUPS' order (-h/--help last, alone)."""
    out: dict[str, list[click.Option]] = {group: [] for group in (*GROUPS, "Other")}
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            out[group_of(option_name(param), command_path)].append(param)
    return {group: params for group, params in out.items() if params}


class GroupedCommand(click.Command):
    """A command whose --help lists its options under headings (Data, Model, ... Engine)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        path = " ".join(ctx.command_path.split()[1:])
        for group, params in grouped_options(self, path).items():
            rows = [p.get_help_record(ctx) for p in params]
            with formatter.section(f"{group} options" if group != "Other" else "Other options"):
                formatter.write_dl([r for r in rows if r is not None])
        help_option = self.get_help_option(ctx)
        if help_option is not None:
            with formatter.section("Help"):
                formatter.write_dl([help_option.get_help_record(ctx)])


# The man page's OPTIONS BY GROUP section is generated from the commands' own declarations
# (`python -m hlmcli.cli.man man/hlmcli.1` rewrites it) and tests/test_docs.py checks it is current.
MAN_BEGIN = '.\\" BEGIN OPTIONS BY GROUP (generated by python -m hlmcli.cli.man; do not edit)'
MAN_END = '.\\" END OPTIONS BY GROUP'
_ROFF = {"\\": "\\e", "-": "\\-", "τ": "\\(*t", "π": "\\(*p", "…": "...", "σ": "\\(*s", "γ": "\\(*g",
         "²": "\\(S2", "×": "\\(mu", "≤": "\\(<=", "≥": "\\(>=", "—": "\\(em", "–": "\\(en", "χ": "\\(*x"}


def roff(text: str) -> str:
    out = "".join(_ROFF.get(c, c) for c in text)
    return "\\&" + out if out[:1] in (".", "'") else out


def commands(group: click.Group, prefix=()):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), cmd


def man_option_groups(main: click.Group) -> str:
    """The roff text of OPTIONS BY GROUP: each command's options, under --help's headings, with --help's words."""
    lines = [MAN_BEGIN, ".SH OPTIONS BY GROUP",
             "What \\fBhlmcli\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR prints, command by command; the options "
             "are described in full under \\fBCOMMANDS\\fR."]
    ctx = click.Context(main, info_name="hlmcli")
    for path, cmd in commands(main):
        lines.append(f".SS {path}")
        sub = click.Context(cmd, info_name=path, parent=ctx)
        for group, params in grouped_options(cmd, path).items():
            lines += [".PP", f"\\fI{group} options\\fR"]
            for param in params:
                names, text = param.get_help_record(sub)
                lines += [".TP", f"\\fB{roff(names)}\\fR", roff(" ".join(text.split())) or "\\&"]
    lines.append(MAN_END)
    return "\n".join(lines) + "\n"


def rewrite_man(path, group) -> None:
    """Rewrites the OPTIONS BY GROUP section of the man page at `path` from the click `group` (cli.main,
    passed in so that help.py stays below cli.py); `python -m hlmcli.cli.man man/hlmcli.1` runs it."""
    from pathlib import Path

    page = Path(path).read_text(encoding="utf-8")
    block = man_option_groups(group)
    if MAN_BEGIN in page:
        head, rest = page.split(MAN_BEGIN, 1)
        page = head + block + rest.split(MAN_END + "\n", 1)[1]
    else:  # before EXIT STATUS
        page = page.replace(".SH EXIT STATUS\n", block + ".SH EXIT STATUS\n", 1)
    Path(path).write_text(page, encoding="utf-8")
