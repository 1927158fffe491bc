"""Every JSON document hlmcli prints validates against the JSON Schema files shipped in hlmcli/schema."""

from __future__ import annotations

import json
from importlib import resources

import pytest

jsonschema = pytest.importorskip("jsonschema")

from conftest import HSB_MODELS, SAMPLE, hlmcli  # noqa: E402


VERSIONS = {"fit": 2, "compare": 2, "mdm-info": 1}


def schema(name: str) -> dict:
    return json.loads(resources.files("hlmcli").joinpath("schema", f"{name}-{VERSIONS[name]}.json").read_text())


def valid(text: str, name: str) -> dict:
    doc = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema(name))
    jsonschema.validate(doc, schema(name))
    return doc


def _fit(archive, name, *extra):
    level1, level2 = HSB_MODELS[name]
    args = ["fit", archive, "-1", level1]
    for eq in level2:
        args += ["-2", eq]
    return hlmcli(*args, "--format", "json", *extra)


def test_schema_files_ship_with_the_package():
    for name in ("fit", "compare", "mdm-info"):
        assert schema(name)["title"].startswith("hlmcli")


@pytest.mark.parametrize("extra", [(), ("--ml", "--test", "g01 = 0, g11 = 0", "--compare-deviance", "47000",
                                         "--compare-params", "3", "--test-homogeneity", "--full-output"),
                                   ("--df", "satterthwaite"), ("--max-iterations", "1")])
def test_fit_json_validates(hsb_archive, extra):
    proc = _fit(hsb_archive, "hsb_m4", *extra)
    assert proc.returncode in (0, 3), proc.stderr
    valid(proc.stdout, "fit")


def test_fit_json_from_an_hlm_file_validates(popular_archive):
    proc = hlmcli("fit", popular_archive, "--model", SAMPLE / "popular2" / "popular.hlm", "--format", "json")
    valid(proc.stdout, "fit")


def test_compare_json_validates(hsb_archive, tmp_path):
    for name in ("hsb_m3", "hsb_m4"):
        (tmp_path / f"{name}.json").write_text(_fit(hsb_archive, name, "--ml").stdout)
    proc = hlmcli("compare", tmp_path / "hsb_m3.json", tmp_path / "hsb_m4.json", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    valid(proc.stdout, "compare")


def test_mdm_info_json_validates_and_has_a_schema_key(hsb_archive):
    doc = valid(hlmcli("mdm", "info", hsb_archive, "--format", "json", "--unit", "1224").stdout, "mdm-info")
    assert doc["schema"] == 1
