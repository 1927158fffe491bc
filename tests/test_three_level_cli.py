"""Three-level models end to end through the command line: build the EG archive, fit Raudenbush & Bryk's
unconditional growth model (Table 8.2) under ML and REML, and check the printed and JSON numbers against
lme4 (tests/data/three_level/*.json, made by lme4 1.1.31 on mlmRev::egsingle and lme4::Pastes)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from hlmcli.cli import main

from conftest import DATA, SAMPLE, hlmcli

EG = SAMPLE / "eg"
REFS = DATA / "three_level"
PASTES = REFS  # pastes_l1.csv, pastes_l2.csv, pastes_l3.csv (lme4::Pastes)
EG_MODEL = ["-1", "MATH = π0 + π1*YEAR + e", "-2", "π0 = β00 + r0", "-2", "π1 = β10 + r1",
            "-3", "β00 = γ000 + u00", "-3", "β10 = γ100 + u10"]
PASTES_MODEL = ["-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00"]


class _Run:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def run(*args):
    """In process (one import for the whole file, so the file stays fast); the ML fit goes through the
    installed command as a user types it."""
    return _Run(CliRunner().invoke(main, [str(a) for a in args]))


def ref(name: str) -> dict:
    return json.loads((REFS / f"{name}.json").read_text())["reference"]


def close(a: float, b: float, rel: float, what: str) -> None:
    assert abs(a - b) <= rel * max(abs(b), 1e-12), f"{what}: {a} vs reference {b}"


@pytest.fixture(scope="module")
def eg_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("eg") / "eg.mdm"
    hlmcli("mdm", "build", EG / "eg_l1.csv", EG / "eg_l2.csv", EG / "eg_l3.csv", "--id2", "CHILDID", "--id3", "SCHOOLID",
           "-o", out, check=True)
    return out


@pytest.fixture(scope="module")
def eg_ml(eg_archive, tmp_path_factory):
    """One ML fit: the text on stdout, the JSON from the same fit, and both residual files."""
    d = tmp_path_factory.mktemp("egfit")
    proc = hlmcli("fit", eg_archive, *EG_MODEL, "--json-out", d / "fit.json", "--residuals-l2", d / "r2.csv",
                  "--residuals-l3", d / "r3.csv")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads((d / "fit.json").read_text()), d


def check_against_lme4(doc: dict, reference: dict, grouping2: str, grouping3: str) -> None:
    for fx in doc["fixed_effects"]:
        r = reference["fixed"][fx["gamma"]]
        close(fx["estimate"], r["est"], 1e-5, fx["gamma"])
        close(fx["se"], r["se"], 1e-4, f"se {fx['gamma']}")
    vc = reference["variance_components"]
    close(doc["sigma2"], vc["residual"]["sigma2"], 1e-4, "sigma2")
    for key, grouping in (("tau_pi", grouping2), ("tau_beta", grouping3)):
        mine, theirs = doc[key]["matrix"], vc[grouping]["tau"]
        scale = max(abs(x) for row in theirs for x in row)
        for i, row in enumerate(theirs):
            for j, x in enumerate(row):
                assert abs(mine[i][j] - x) <= 1e-4 * scale + 1e-4 * abs(x), f"{key}[{i},{j}]: {mine[i][j]} vs {x}"
    close(doc["deviance"], reference["deviance"], 1e-6, "deviance")


def test_eg_ml_matches_lme4_and_table_8_2(eg_ml):
    text, doc, _ = eg_ml
    assert doc["schema"] == 3 and doc["levels"] == 3 and doc["method"] == "ML" and doc["converged"]
    assert (doc["n_level1"], doc["n_level2"], doc["n_level3"]) == (7230, 1721, 60)
    check_against_lme4(doc, ref("eg_m1_ml"), "SCHOOLID:CHILDID", "SCHOOLID")
    assert doc["n_params"] == ref("eg_m1_ml")["n_params"]
    # Raudenbush & Bryk (2002), Table 8.2, to its printed digits
    g = {f["gamma"]: f["estimate"] for f in doc["fixed_effects"]}
    assert (round(g["γ000"], 3), round(g["γ100"], 3), round(doc["sigma2"], 3)) == (-0.779, 0.763, 0.301)
    assert round(doc["tau_pi"]["matrix"][0][0], 3) == 0.640 and round(doc["tau_beta"]["matrix"][0][0], 3) == 0.165
    assert round(doc["tau_pi"]["matrix"][1][1], 3) == 0.011 and round(doc["tau_beta"]["matrix"][1][1], 3) == 0.011
    # the printed text carries the same numbers
    assert "Method of estimation: full maximum likelihood" in text
    assert "Iterations stopped at the optimum (checked: no change of σ2, τπ and τβ lowers the deviance)" in text
    assert "INTRCPT3, γ000              -0.779305       0.057829" in text
    assert "INTRCPT3, γ100               0.763027       0.015261" in text
    assert " σ2 =      0.30144" in text
    assert f" Deviance                       = {doc['deviance']:.6f}" in text
    assert "16326.2311" in text and " Number of estimated parameters = 9" in text
    assert "Final estimation of level-3 variance components" in text
    assert "MATH ~ 1 + YEAR + (1 + YEAR | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID)" in text


def test_eg_reml_matches_lme4(eg_archive):
    proc = run("fit", eg_archive, *EG_MODEL, "--reml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["method"] == "REML"
    check_against_lme4(doc, ref("eg_m1_reml"), "SCHOOLID:CHILDID", "SCHOOLID")


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_pastes_from_three_files_matches_lme4(method, tmp_path):
    """Three files straight to fit (built and cached as 'fit L1 L2' does); a text column (CASK) is left out."""
    extra = ["--reml"] if method == "reml" else []
    proc = run("fit", PASTES / "pastes_l1.csv", PASTES / "pastes_l2.csv", PASTES / "pastes_l3.csv",
                  "--id2", "SAMPLE", "--id3", "BATCH", *PASTES_MODEL, *extra, "--format", "json", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    check_against_lme4(json.loads(proc.stdout), ref(f"pastes_{method}"), "BATCH:SAMPLE", "BATCH")
    again = run("fit", PASTES / "pastes_l1.csv", PASTES / "pastes_l2.csv", PASTES / "pastes_l3.csv",
                   "--id2", "SAMPLE", "--id3", "BATCH", *PASTES_MODEL, *extra, "--format", "json", "--cache-dir", tmp_path / "c")
    assert again.stdout == proc.stdout  # byte-identical, from the cached archive
    assert len(list((tmp_path / "c").glob("*.mdm"))) == 1


def test_json_validates_against_fit_3(eg_ml):
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("hlmcli").joinpath("schema", "fit-3.json").read_text())
    jsonschema.validate(eg_ml[1], schema)


def test_residual_files(eg_ml):
    import csv

    _, doc, d = eg_ml
    rows2 = list(csv.DictReader(open(d / "r2.csv")))
    rows3 = list(csv.DictReader(open(d / "r3.csv")))
    assert len(rows2) == 1721 and len(rows3) == 60
    assert {"id", "SCHOOLID", "nj", "r_INTRCPT1", "postvar_r_INTRCPT1", "r_YEAR", "FEMALE"} <= set(rows2[0])
    assert {"id", "n2", "n1", "u_INTRCPT1_INTRCPT2", "u_YEAR_INTRCPT2", "LOWINC"} <= set(rows3[0])
    assert sum(int(r["nj"]) for r in rows2) == 7230 and sum(int(r["n2"]) for r in rows3) == 1721
    # EB residuals average near zero (they are shrunken deviations from the fixed part)
    assert abs(sum(float(r["u_INTRCPT1_INTRCPT2"]) for r in rows3) / 60) < 0.05


def test_mdm_info_three_levels(eg_archive):
    proc = run("mdm", "info", eg_archive)
    assert proc.returncode == 0, proc.stderr
    for title in ("LEVEL-1 DESCRIPTIVE STATISTICS", "LEVEL-2 DESCRIPTIVE STATISTICS", "LEVEL-3 DESCRIPTIVE STATISTICS"):
        assert title in proc.stdout
    assert "level-3 units:   60" in proc.stdout
    doc = json.loads(run("mdm", "info", eg_archive, "--format", "json").stdout)
    assert doc["levels"] == 3 and doc["n_level3"] == 60 and [v["name"] for v in doc["level3"]] == ["SIZE", "LOWINC", "MOBILITY"]
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    jsonschema.validate(doc, json.loads(resources.files("hlmcli").joinpath("schema", "mdm-info-1.json").read_text()))
    mobility = next(v for v in doc["level3"] if v["name"] == "MOBILITY")
    assert abs(mobility["mean"] - 34.745) < 1e-9  # mean of eg_l3.csv's MOBILITY, by hand (60 schools)


def test_model_forms_agree(eg_archive):
    """-1/-2/-3 in Greek, the same in ASCII, a three-block model file, the .hlm command file and pasted HLM3 output."""
    forms = [
        EG_MODEL,
        ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
         "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10"],
        ["--model", EG / "eg_m1.txt"],
        ["--model", EG / "eg_m1.hlm"],
        ["-1", "Level-1 Model\n Y = P0 + P1*(YEAR) + E\nLevel-2 Model\n P0 = B00 + R0\n P1 = B10 + R1\n"
               "Level-3 Model\n B00 = G000 + U00\n B10 = G100 + U10\nThe outcome variable is MATH"],
    ]
    outputs = []
    for form in forms:
        proc = run("model", eg_archive, *form)
        assert proc.returncode == 0, (form, proc.stderr)
        outputs.append(proc.stdout)
    assert all(o == outputs[0] for o in outputs)
    assert "(1 + YEAR | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID)" in outputs[0]
    assert "    β00k = γ000 + u00k" in outputs[0]


def test_hlm3_template_builds_the_same_archive(tmp_path, eg_archive):
    for name in ("eg.mdmt", "eg_l1.csv", "eg_l2.csv", "eg_l3.csv"):
        shutil.copy(EG / name, tmp_path / name)
    proc = run("mdm", "build", "--template", tmp_path / "eg.mdmt")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(run("mdm", "info", tmp_path / "eg.mdm", "--format", "json").stdout)
    assert (doc["n_level1"], doc["n_level2"], doc["n_level3"]) == (7230, 1721, 60)
    assert [v["name"] for v in doc["level1"]] == ["YEAR", "MATH"] and [v["name"] for v in doc["level3"]] == ["LOWINC", "MOBILITY"]


# ---------------------------------------------------------------- errors: one line, documented exit code

def _one_line_error(proc, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.startswith("hlmcli: error")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _write(path, text):
    path.write_text(text)
    return path


def test_level2_unit_under_two_level3_units(tmp_path):
    l1 = _write(tmp_path / "l1.csv", "S,C,Y\n1,10,1.0\n1,10,2.0\n2,10,3.0\n2,11,4.0\n")
    l2 = _write(tmp_path / "l2.csv", "C,S\n10,1\n10,2\n11,2\n")
    l3 = _write(tmp_path / "l3.csv", "S\n1\n2\n")
    proc = run("mdm", "build", l1, l2, l3, "--id2", "C", "--id3", "S", "-o", tmp_path / "x.mdm")
    _one_line_error(proc, 1, "level-2 unit 10", "two level-3 units")
    # the level-1 file alone gives the link (level-2 file without S): the same refusal
    l2b = _write(tmp_path / "l2b.csv", "C\n10\n11\n")
    proc = run("mdm", "build", l1, l2b, l3, "--id2", "C", "--id3", "S", "-o", tmp_path / "x.mdm")
    _one_line_error(proc, 1, "two level-3 units")


def test_one_shared_file_keeps_a_variable_at_the_level_it_is_named_for(tmp_path):
    """One file for all three levels: by default a variable goes to the highest level it is constant in
    (X within classes, Z within schools); one named with --l1-vars or --l2-vars stays at that level, as at
    two levels, rather than being refused as 'in more than one level'; W, missing in one record of a class
    and not in the other, is not constant within it and stays at level 1 (it was refused as 'varying')."""
    from hlmcli.io.archive import load_archive

    f = _write(tmp_path / "all.csv", "S,C,Y,X,Z,W\n1,10,1.0,5,7,1\n1,10,2.0,5,7,\n1,11,3.0,6,7,2\n2,12,4.0,7,8,3\n"
                                      "2,12,5.0,7,8,3\n")
    cases = [((), (["Y", "W"], ["X"], ["Z"])),
             (("--l1-vars", "Y,X,Z"), (["Y", "X", "Z"], [], [])),
             (("--l1-vars", "Y", "--l2-vars", "X,Z"), (["Y"], ["X", "Z"], []))]
    for k, (flags, names) in enumerate(cases):
        out = tmp_path / f"x{k}.mdm"
        proc = run("mdm", "build", f, f, f, "--id2", "C", "--id3", "S", *flags, "-o", out)
        assert proc.returncode == 0, proc.stderr
        archive = load_archive(out, 3)
        assert tuple(archive.names(level) for level in (1, 2, 3)) == names, flags


def test_an_infinite_level3_value_is_refused_without_offering_missing_now(tmp_path):
    """Above level 1 nothing can be missing (HLM needs complete unit data), so --missing now is no way out
    of an infinite level-3 value and the refusal must not offer it; it names the level's own option."""
    l1 = _write(tmp_path / "l1.csv", "S,C,Y\n1,10,1.0\n2,11,2.0\n")
    l2 = _write(tmp_path / "l2.csv", "C,S\n10,1\n11,2\n")
    l3 = _write(tmp_path / "l3.csv", "S,Z\n1,0.5\n2,inf\n")
    proc = run("mdm", "build", l1, l2, l3, "--id2", "C", "--id3", "S", "--missing", "now", "-o", tmp_path / "x.mdm")
    _one_line_error(proc, 1, "l3.csv", "column Z", "line 3", "infinite", "--l3-vars", "does not apply")
    assert "to treat infinite values as missing" not in proc.stderr and not (tmp_path / "x.mdm").exists()


def test_missing_ids_and_unmatched_records(tmp_path):
    l1 = _write(tmp_path / "l1.csv", "S,C,Y\n1,10,1.0\n1,12,2.0\n")
    l2 = _write(tmp_path / "l2.csv", "C,S\n10,1\n")
    l3 = _write(tmp_path / "l3.csv", "S\n1\n")
    # a missing id, or one that names no column, is a usage error (exit 2, as the man page says)
    _one_line_error(run("mdm", "build", l1, l2, l3, "--id2", "C", "-o", tmp_path / "x.mdm"), 2, "--id3")
    _one_line_error(run("mdm", "build", l1, l2, l3, "--id2", "C", "--id3", "T", "-o", tmp_path / "x.mdm"), 2, "T")
    _one_line_error(run("mdm", "build", l1, l2, l3, "--id2", "C", "--id3", "S", "-o", tmp_path / "x.mdm"), 1,
                    "no level-2 record", "12")
    ok = run("mdm", "build", l1, l2, l3, "--id2", "C", "--id3", "S", "--drop-unmatched", "-o", tmp_path / "x.mdm")
    assert ok.returncode == 0 and "dropped 1 level-1 records" in ok.stderr


@pytest.mark.parametrize("model,words", [
    (["-1", "MATH = p0 + p1*YEAR + e", "-2", "p1 = b00 + r1"], ["b00 belongs to π0"]),
    (["-1", "MATH = p0 + e", "-3", "b20 = g200 + u20"], ["π2", "not in the level-1 equation"]),
    (["-1", "MATH = p0 + e", "-3", "b01 = g010"], ["β01 is not in the level-2 equation of π0"]),
    (["-1", "MATH = p0 + p1*FEMALE + e"], ["FEMALE is a level-2 variable"]),
    (["-1", "MATH = p0 + e", "-3", "b00 = g000 + g002*LOWINC + u00"], ["out of order"]),
    (["-1", "MATH = p0 + e", "-2", "p0 = b00"], ["no π is random at level 2"]),
    (["-1", "MATH = p0 + e", "-3", "b00 = g000"], ["no β is random at level 3"]),
])
def test_bad_equations(eg_archive, model, words):
    _one_line_error(run("model", eg_archive, *model), 1, *words)


def test_options_not_yet_available_are_refused(eg_archive):
    # refused by the capabilities table, the first feature asked in one line with its reason
    proc = run("fit", eg_archive, *EG_MODEL, "--df", "hlm6")
    _one_line_error(proc, 2, "--df hlm6", "not available for a three-level linear fit", "HLM 5/6")
    # a three-level HGLM is fitted by PQL, Laplace or AGQ (tests/test_hglm3*.py): a continuous outcome is refused
    # by the family's check (the data: exit 1)
    _one_line_error(run("fit", eg_archive, *EG_MODEL, "--family", "bernoulli"), 1, "column MATH, row 1",
                    "is not 0 or 1")
    _one_line_error(run("fit", eg_archive, *EG_MODEL, "--allow-unequal-imputations"), 2, "--allow-unequal-imputations")
    _one_line_error(run("plot", "units", eg_archive, *EG_MODEL, "-o", "x.png"), 2, "a units plot of a 3-level fit",
                    "not yet for k levels")


def test_two_level_commands_refuse_a_three_level_archive_and_level3_lines(eg_archive, hsb_archive, tmp_path):
    hlm = _write(tmp_path / "m.hlm", "level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n"
                                     "level3:INTRCPT2=INTRCPT3+random/\n")
    _one_line_error(run("fit", hsb_archive, "--model", hlm), 1, "level3", "three data files")
    _one_line_error(run("fit", hsb_archive, "-1", "MATHACH = b0 + r", "-3", "b00 = g000 + u00"), 2, "-3/--level3")


CENTRED_MODEL = ["-1", "MATH = p0 + p1*group(YEAR) + e",
                 "-2", "p0 = b00 + b01*mean(YEAR) + b02*group(FEMALE) + r0", "-2", "p1 = b10 + b11*BLACK + r1",
                 "-3", "b00 = g000 + g001*grand(LOWINC) + u00", "-3", "b10 = g100 + g101*grand(LOWINC) + u10"]


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_centring_at_every_level_matches_lme4(eg_archive, method):
    """group() at levels 1 and 2, mean() and grand() against lme4 on columns centred by hand in R
    (tests/reference_scripts/three_level_centring_lme4.R -> tests/data/three_level/eg_centring.json)."""
    reference = json.loads((REFS / "eg_centring.json").read_text())[method]
    proc = run("fit", eg_archive, *CENTRED_MODEL, *(["--reml"] if method == "reml" else []), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["lme4_formula"] == reference["formula"]
    for fx in doc["fixed_effects"]:
        close(fx["estimate"], reference["fixed"][fx["gamma"]]["est"], 1e-5, fx["gamma"])
        close(fx["se"], reference["fixed"][fx["gamma"]]["se"], 1e-4, f"se {fx['gamma']}")
    close(doc["sigma2"], reference["sigma2"], 1e-5, "sigma2")
    close(doc["deviance"], reference["deviance"], 1e-8, "deviance")
    for key in ("tau_pi", "tau_beta"):
        for mine, theirs in zip(sum(doc[key]["matrix"], []), sum(reference[key], [])):
            assert abs(mine - theirs) <= 1e-4 * abs(theirs) + 1e-7, (key, mine, theirs)


def test_uncertified_fit_exits_3_and_writes_nothing(eg_archive, tmp_path):
    proc = run("fit", eg_archive, *EG_MODEL, "--max-iterations", "1", "-o", tmp_path / "out.txt",
               "--residuals-l3", tmp_path / "r3.csv")
    assert proc.returncode == 3 and "not certified" in proc.stderr
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "r3.csv").exists()
