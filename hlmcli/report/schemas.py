"""The JSON Schema files of the documents hlmcli writes (hlmcli/schema/<kind>-<version>.json), and the
check of a saved document against its schema when it is read back (`table`, `compare`, `plot`).

jsonschema, when installed (the `test` and `tables` extras bring it), checks the whole schema. Without
it a small check covers the part of JSON Schema the files use at their top level and in arrays of
objects (type, required, const, enum, minimum, properties, items); the conditions that tell a linear
fit from an HGLM fit (allOf/if/then) are then left to the reading code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

# The document kinds and the schema version each writer emits.
VERSIONS = {"fit": 2, "combined": 2, "compare": 2, "mdm-info": 1}
_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


@lru_cache(maxsize=None)
def schema(kind: str) -> dict:
    name = f"{kind}-{VERSIONS[kind]}.json"
    return json.loads(resources.files("hlmcli").joinpath("schema", name).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def schema_file(name: str) -> dict:
    return json.loads(resources.files("hlmcli").joinpath("schema", name).read_text(encoding="utf-8"))


def first_error_file(doc, name: str) -> str | None:
    """As `first_error`, against the schema file `name` (fit-3.json, fit-levels.json)."""
    return _first_error(doc, schema_file(name))


def first_error(doc, kind: str) -> str | None:
    return _first_error(doc, schema(kind))


def _first_error(doc, schema_doc: dict) -> str | None:
    """The first way `doc` breaks the schema of `kind`, in one line naming where; None if it is valid."""
    try:
        import jsonschema
    except ImportError:
        return _check(doc, schema_doc, "")
    errors = sorted(jsonschema.Draft202012Validator(schema_doc).iter_errors(doc),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return None
    e = errors[0]
    where = _where(list(e.absolute_path))
    return f"{where}: {_short(e.message)}" if where else _short(e.message)


def _where(path: list) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= 160 else message[:157] + "..."


def _is(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def _check(value, rule: dict, where: str) -> str | None:
    """The small check used without jsonschema (see the module's note)."""
    kinds = rule.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return f"{where or 'the document'}: {json.dumps(value)[:40]} is not of type {' or '.join(kinds)}"
    if "const" in rule and value != rule["const"]:
        return f"{where or 'the document'}: {json.dumps(value)[:40]} is not {json.dumps(rule['const'])}"
    if "enum" in rule and value not in rule["enum"]:
        return f"{where or 'the document'}: {json.dumps(value)[:40]} is not one of {json.dumps(rule['enum'])[:80]}"
    if "minimum" in rule and _is(value, "number") and value < rule["minimum"]:
        return f"{where}: {value} is less than the minimum of {rule['minimum']}"
    if isinstance(value, dict):
        for key in rule.get("required", []):
            if key not in value:
                return (f"{where}: " if where else "") + f"'{key}' is a required property"
        for key, sub in rule.get("properties", {}).items():
            if key in value and isinstance(sub, dict):
                problem = _check(value[key], sub, f"{where}.{key}" if where else key)
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(rule.get("items"), dict):
        for k, item in enumerate(value):
            problem = _check(item, rule["items"], f"{where}[{k}]")
            if problem:
                return problem
    return None
