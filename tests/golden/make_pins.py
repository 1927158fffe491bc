"""Regenerate the behaviour pins of tests/test_pins.py: the text and JSON that hlmcli prints today for
two- and three-level linear fits.

These are pins, not references: the numbers in them are checked against HLM 7 and lme4 by the
reference tests (test_fit_cli.py, test_three_level_cli.py, test_lme4_reference.py). The pins catch any
unintended change in what a user sees while the code is restructured. Regenerate them only when a
change is intended, and say why in the commit:

    python tests/golden/make_pins.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_pins import PINS, run_pin  # noqa: E402

if __name__ == "__main__":
    for name, (args, kind) in PINS.items():
        out = run_pin(args)
        (HERE / f"pin_{name}.{kind}").write_text(out, encoding="utf-8")
        print(f"wrote pin_{name}.{kind}")
