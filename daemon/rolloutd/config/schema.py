"""The JSON Schema of the config file as a person writes it, for editors and CI checks.

Rules:
* It describes the file before `${VAR}` expansion, so a reference is valid wherever the
  loader accepts one: the loader expands every string value, then validates, so a number,
  a boolean, a duration, a pattern-checked or enumerated string may be given as "${X}".
  Only keys are never expanded, and an integer enum (`qos`) never takes a string.
* Every property carries the description of its pydantic field (a test holds to it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# A string holding at least one ${NAME} or ${NAME:-default} reference (config.load._REFERENCE).
ENV_REFERENCE: dict[str, Any] = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": (
        "A ${VAR} or ${VAR:-default} reference, replaced from the environment when the file"
        " is loaded; the result must be a valid value here."
    ),
}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")  # name -> schema
_SCHEMAS = ("items", "additionalProperties", "not")  # a schema (or a boolean)
_META = ("title", "description", "default")  # kept on the outside when a leaf is wrapped
_LAX = frozenset({"number", "integer", "boolean"})  # pydantic parses these from strings
_CHECKED = ("pattern", "format", "enum", "const", "maxLength")


def file_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s validation schema, accepting `${VAR}` references wherever loading does."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _with_references(schema, wrap=False)
    return result


def _with_references(node: Any, wrap: bool = True) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            out[key] = {name: _with_references(sub) for name, sub in node[key].items()}
    for key in _SCHEMAS:
        if key in node:
            out[key] = _with_references(node[key])
    if isinstance(node.get("anyOf"), list):
        members = [_with_references(sub, wrap=False) for sub in node["anyOf"]]
        if any(_takes_reference(sub) for sub in members):
            members.append(ENV_REFERENCE)
        out["anyOf"] = members
        return out
    if isinstance(node.get("oneOf"), list):
        # A union of mappings told apart by a const tag (alerts' `type`). With "${X}" allowed
        # in the tag several members may match, which oneOf would reject: anyOf, then.
        # `discriminator` (OpenAPI's) means oneOf, so it goes too.
        out["anyOf"] = [_with_references(sub) for sub in out.pop("oneOf")]
        out.pop("discriminator", None)
        return out
    if wrap and _takes_reference(out):
        meta = {key: out.pop(key) for key in _META if key in out}
        return {"anyOf": [out, ENV_REFERENCE], **meta}
    return out


def _takes_reference(node: Any) -> bool:
    """Whether a leaf rejects a "${X}" string that the loader would accept once expanded."""
    if not isinstance(node, dict) or node is ENV_REFERENCE:
        return False
    kind = node.get("type")
    values = node.get("enum", [node["const"]] if "const" in node else None)
    if values is not None:
        return all(isinstance(value, str) for value in values)
    if kind in _LAX:
        return True
    return kind == "string" and any(key in node for key in _CHECKED)
