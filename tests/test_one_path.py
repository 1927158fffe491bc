"""One model, one path: the same request gives the same fit whichever door it enters by (the Python
API, `hlmcli fit`, `hlmcli plot`), and HGLM fits are read, written and ended as linear fits are.

Each test is one divergence that was found (the number it checks comes from R's reference files in
tests/data/, not from our own output)."""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pandas as pd
import pytest

import hlmcli
from conftest import DATA, hlmcli as run_cli

H = DATA / "hglm"
W = DATA / "weights"
CBPP = [H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "-1", "INCID = b0 + b1*P2 + b2*P3 + b3*P4",
        "-2", "b0 = g00 + u0", "--family", "binomial", "--trials", "SIZE"]
CONTRA = [H / "contra_l1.csv", H / "contra_l2.csv", "--id", "DISTRICT", "-1", "USE = b0 + b1*URBAN + b2*AGE",
          "-2", "b0 = g00 + u0", "--family", "bernoulli"]
MMMEC = [H / "mmmec_l1.csv", H / "mmmec_l2.csv", "--id", "REGION", "-1", "DEATHS = b0 + b1*UVB", "-2", "b0 = g00 + u0",
         "--family", "poisson", "--exposure", "EXPECTED"]
CBPP_HLM = ("#WHLM CMD FILE\nnonlin:binomial,SIZE\nfixsigma2:1.000000\nmacroit:100,y\nmicroit:14\n"
            "stopmacro:0.00000001\nstopmicro:0.000001\nlevel1:INCID=INTRCPT1+P2+P3+P4+RANDOM\n"
            "level2:INTRCPT1=INTRCPT2+random/\nlevel2:P2=INTRCPT2/\nlevel2:P3=INTRCPT2/\nlevel2:P4=INTRCPT2/\nmlf:y\n")


def ref(path):
    return json.loads(path.read_text())["reference"]


def fit_json(*args):
    proc = run_cli("fit", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- the API and plot take the model's family and weights

def test_api_fits_the_family_of_an_hlm_file(tmp_path):
    path = tmp_path / "cbpp.hlm"
    path.write_text(CBPP_HLM)
    res = hlmcli.fit(H / "cbpp_l1.csv", H / "cbpp_l2.csv", id="HERD", model=path)
    r = ref(H / "refs" / "cbpp_ri_pql_ml.json")["fixed"]
    got = res.fixed_effects.set_index("gamma")["estimate"]
    for label, e in r.items():
        assert got[label] == pytest.approx(e["est"], rel=1e-4)
    assert res.to_dict()["family"] == "binomial"


def test_api_fits_the_weights_of_an_hlm_file(tmp_path):
    path = tmp_path / "w.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+SES+RANDOM\nlevel2:INTRCPT1=INTRCPT2+SECTOR+random/\n"
                    "level2:SES=INTRCPT2/\nlevel1weight:W1\nlevel2weight:W2\nmlf:y\n")
    res = hlmcli.fit(W / "hsbw_l1.csv", W / "hsbw_l2.csv", id="ID", model=path)
    r = ref(W / "hsbw_ri_norm_cluster.json")["fixed"]
    for row in res.to_dict()["fixed_effects"]:
        assert row["estimate"] == pytest.approx(r[row["gamma"]]["est"], rel=1e-5)
        assert row["robust_se"] == pytest.approx(r[row["gamma"]]["se"], rel=1e-4)


def test_api_takes_family_and_estimation():
    res = hlmcli.fit(H / "mmmec_l1.csv", H / "mmmec_l2.csv", id="REGION", level1_eq="DEATHS = b0 + b1*UVB",
                     level2_eqs=["b0 = g00 + u0"], family="poisson", exposure="EXPECTED", estimation="laplace")
    assert res.deviance == pytest.approx(ref(H / "refs" / "mmmec_ri_tmb.json")["deviance"], rel=1e-7)
    assert res.aic == pytest.approx(res.deviance + 2 * 3, rel=1e-12)
    assert res.to_dict()["family"] == "poisson" and res.to_dict()["estimation"] == "laplace"


def test_plot_draws_and_saves_the_hglm_fit(tmp_path):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "drawn.json"
    proc = run_cli("plot", "equation", *CONTRA, "-o", tmp_path / "eq.png", "--json-out", saved, "-q")
    assert proc.returncode == 0, proc.stderr
    drawn = json.loads(saved.read_text())
    fitted = fit_json(*CONTRA)
    assert drawn["family"] == "bernoulli"
    assert drawn["fixed_effects"] == fitted["fixed_effects"]


# ---------------------------------------------------------------- HGLM JSON: a schema, read back by table and compare

def _schema(name):
    return json.loads(resources.files("hlmcli").joinpath("schema", name).read_text())


@pytest.mark.parametrize("method", [[], ["--estimation", "laplace"], ["--estimation", "agq"]])
def test_hglm_json_passes_the_fit_schema(method):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(fit_json(*CONTRA, *method), _schema("fit-2.json"))


def test_plausible_values_json_passes_its_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from test_pinned_fits import PV_MODEL, make_pv_files

    doc = fit_json(*make_pv_files(tmp_path), *PV_MODEL)
    jsonschema.validate(doc, _schema("combined-2.json"))
    for fit in doc["fits"]:
        jsonschema.validate(fit, _schema("fit-2.json"))


def test_table_and_compare_read_hglm_fits(tmp_path):
    a, b, p = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "p.json"
    short = [H / "contra_l1.csv", H / "contra_l2.csv", "--id", "DISTRICT", "-1", "USE = b0 + b1*URBAN",
             "-2", "b0 = g00 + u0", "--family", "bernoulli", "--estimation", "laplace"]
    a.write_text(json.dumps(fit_json(*short)))
    b.write_text(json.dumps(fit_json(*CONTRA, "--estimation", "laplace")))
    p.write_text(json.dumps(fit_json(*CONTRA)))
    proc = run_cli("compare", a, b, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    lr = json.loads(proc.stdout)
    da, db = json.loads(a.read_text())["deviance"], json.loads(b.read_text())["deviance"]
    assert lr["chi2"] == pytest.approx(da - db, rel=1e-12) and lr["df"] == 1  # AGE added
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(lr, _schema("compare-2.json"))
    proc = run_cli("compare", p, b)
    assert proc.returncode == 1 and "PQL" in proc.stderr and "no deviance" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("table", a, b, p, "--format", "csv")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("fmt", ["csv", "markdown", "latex", "html"])
def test_hglm_paper_tables(fmt):
    pytest.importorskip("jinja2")
    pytest.importorskip("tabulate")
    proc = run_cli("fit", *CONTRA, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert "URBAN" in proc.stdout


def test_laplace_text_has_aic_and_bic():
    proc = run_cli("fit", *MMMEC, "--estimation", "laplace")
    assert proc.returncode == 0, proc.stderr
    tmb = ref(H / "refs" / "mmmec_ri_tmb.json")  # glmmTMB reaches our optimum; glmer stops 1e-8 short
    deviance = float(re.search(r"Deviance += ([\d.]+)", proc.stdout).group(1))
    assert deviance == pytest.approx(tmb["deviance"], rel=1e-7)
    m = re.search(r"AIC = ([\d.]+), BIC = ([\d.]+)", proc.stdout)
    assert m, "no AIC/BIC line"
    # lme4's AIC(), BIC(): deviance + 2k and + k·log N; k = 3 (γ00, γ10, τ00), N the level-1 records
    k, n = ref(H / "refs" / "mmmec_ri_laplace.json")["n_params"], len(pd.read_csv(H / "mmmec_l1.csv"))
    assert float(m.group(1)) == pytest.approx(deviance + 2 * k, abs=2e-6)
    assert float(m.group(2)) == pytest.approx(deviance + k * np.log(n), abs=2e-6)


# ---------------------------------------------------------------- one ending: files only when certified, -q, --timestamp

def test_pql_that_exits_3_writes_no_files(tmp_path):
    path = tmp_path / "cbpp.hlm"
    path.write_text(CBPP_HLM.replace("macroit:100,y", "macroit:1,y"))
    out, r2 = tmp_path / "out.txt", tmp_path / "r2.csv"
    proc = run_cli("fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "--model", path, "-o", out,
                   "--residuals-l2", r2)
    assert proc.returncode == 3
    assert not out.exists() and not r2.exists()
    proc = run_cli("fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "--model", path, "-q")
    assert proc.returncode == 3 and proc.stderr == ""


def test_hglm_timestamp():
    proc = run_cli("fit", *CBPP, "--timestamp")
    assert proc.returncode == 0, proc.stderr
    assert " UTC" in proc.stdout


# ---------------------------------------------------------------- γ labels: HLM 7's comma rule, one function

@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Eleven level-1 predictors and ten level-2 predictors: γ1,10 and γ11,0 both exist."""
    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(19)
    J, n = 40, 12
    l2 = pd.DataFrame({"ID": np.arange(1, J + 1), **{f"Z{k}": rng.normal(size=J) for k in range(1, 11)}})
    ids = np.repeat(l2.ID, n)
    l1 = pd.DataFrame({"ID": ids, **{f"X{k}": rng.normal(size=J * n) for k in range(1, 12)}})
    l1["Y"] = l1[[f"X{k}" for k in range(1, 12)]].sum(axis=1) + np.repeat(rng.normal(size=J), n) + rng.normal(size=J * n)
    l1.to_csv(d / "l1.csv", index=False)
    l2.to_csv(d / "l2.csv", index=False)
    level1 = "Y = b0 + " + " + ".join(f"b{k}*X{k}" for k in range(1, 12)) + " + r"
    level2 = ["b0 = g00 + u0", "b1 = g10 + " + " + ".join(f"g1{k}*Z{k}" if k < 10 else f"g1,{k}*Z{k}" for k in range(1, 11))]
    level2 += [f"b{k} = g{k}0" if k < 10 else f"b{k} = g{k},0" for k in range(2, 12)]
    args = [d / "l1.csv", d / "l2.csv", "--id", "ID", "-1", level1]
    for eq in level2:
        args += ["-2", eq]
    return args


def test_gamma_labels_follow_the_comma_rule(wide):
    doc = fit_json(*wide)
    labels = [f["gamma"] for f in doc["fixed_effects"]]
    assert len(set(labels)) == len(labels)
    assert "γ1,10" in labels and "γ11,0" in labels and "γ19" in labels
    text = run_cli("fit", *wide).stdout
    assert "Z10, γ1,10" in text and "INTRCPT2, γ11,0" in text


@pytest.mark.parametrize("written", ["g1,10 = 0", "γ1,10 = 0", "g1,10 = 0, g11,0 = 0"])
def test_test_accepts_the_printed_label(wide, written):
    doc = fit_json(*wide, "--test", written)
    (test,) = doc["hypothesis_tests"]
    est = {f["gamma"]: f for f in doc["fixed_effects"]}
    if written.count("=") == 1:  # one restriction: the Wald χ² is t²
        assert test["model"]["chi2"] == pytest.approx(est["γ1,10"]["t"] ** 2, rel=1e-10)
    else:
        assert test["model"]["df"] == 2
