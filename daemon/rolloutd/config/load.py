"""Reading the file: strict YAML (no duplicate keys), `${VAR}` expansion, validation."""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from rolloutd.config.errors import ConfigError, describe_value, format_error
from rolloutd.config.model import Config


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{source}: cannot read: {reason}"], source) from None
    return parse_config(text, source, env)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate YAML `text`; `env` (default os.environ) feeds `${VAR}` references."""
    data = _load_yaml(text, source)
    errors: list[str] = []
    data = _expand(data, os.environ if env is None else env, "", errors)
    if errors:
        raise ConfigError(errors, source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([format_error(e, data) for e in exc.errors()], source) from None
    except ConfigError as exc:
        raise ConfigError(exc.errors, source) from None


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the file for editors (durations are a string or a number of seconds)."""
    from rolloutd.config.schema import file_schema  # imports this module: import it late

    schema = file_schema(Config)
    schema["title"] = "rolloutd configuration"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden on purpose
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([f"{where}: {exc.problem}{context}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"yaml: {exc}"], source) from None
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping, got {describe_value(data)}"], source)
    return data


_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(:-(?P<default>.*))?", re.DOTALL)


def _expand(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """`node` with `${VAR}` references in its strings expanded; problems go to `errors`."""
    if isinstance(node, dict):
        return {key: _expand(value, env, _join(path, key), errors) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(value, env, f"{path}[{i}]", errors) for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        variable = _VARIABLE.fullmatch(match.group(1) or "")
        if variable is None:
            # Never quote the text: it may be a secret that merely contains "${".
            errors.append(
                f"{path}: bad ${{...}} reference (use ${{NAME}}, ${{NAME:-default}}, "
                "or $${ for a literal ${)"
            )
            return ""
        value = env.get(variable["name"])
        if not value and variable["default"] is not None:
            return variable["default"]
        if value is None:
            errors.append(f"{path}: environment variable {variable['name']} is not set")
        return value or ""

    return _REFERENCE.sub(replace, node)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
