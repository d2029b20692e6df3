"""Where NodeConfig's values come from: defaults < config.toml < HEARTH_* environment < command-line flags.

- The file is `config.toml` in the user's config dir (platformdirs), or the path in HEARTH_CONFIG. Top-level
  keys are NodeConfig fields; policy fields live in a [policy] table.
- Environment: HEARTH_<FIELD>, e.g. HEARTH_THREADS=2, HEARTH_DEVICE=cpu; nested fields join with a double
  underscore: HEARTH_POLICY__IDLE_MINUTES=5. An empty variable counts as unset; "none" clears an optional value.
  Lists (gpus) are TOML arrays in the file and comma-separated text elsewhere: HEARTH_GPUS=0,1, --gpus 0,1.
- Flags: `hearth join --threads 2 --idle-minutes 5`: the field name with dashes.

Every effective value remembers its Source, which `hearth node config show` prints.
"""

import ast
import functools
import inspect
import json
import logging
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from platformdirs import user_config_dir

from node import config as config_module
from node.config import NodeConfig, PolicyConfig

logger = logging.getLogger(__name__)
CONFIG_ENV = "HEARTH_CONFIG"
ENV_PREFIX = "HEARTH_"
NO_URL = "http://coordinator-url.not-set"
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    default = Path(user_config_dir("hearth", appauthor=False)) / "config.toml"
    return Path(environ.get(CONFIG_ENV) or default).expanduser()


@dataclass(frozen=True)
class Key:
    """One setting: `threads` or `policy.idle_minutes`, with its type from the config dataclasses."""

    name: str
    type: Any

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "__").upper()

    @property
    def flag(self) -> str:
        return "URL argument" if self.name == "coordinator_url" else "--" + self.name.split(".")[-1].replace("_", "-")

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def base(self) -> Any:
        args = [arg for arg in typing.get_args(self.type) if arg is not type(None)]
        return args[0] if self.optional else self.type

    def parse(self, value: Any) -> Any:
        """A typed value from a string (env, `config set`) or a TOML/flag value; ValueError says what was expected."""
        base, text = self.base, value.strip() if isinstance(value, str) else None
        if text is not None and self.optional and text.lower() in ("none", "null", ""):
            return None
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            if isinstance(value, str) and text.lower() in choices:
                return text.lower()
            raise ValueError(f"{self.name}: expected one of {', '.join(choices)}, got {value!r}")
        if typing.get_origin(base) is list:  # a TOML array, or text such as "0,1"
            items = value if isinstance(value, list) else text.split(",") if text is not None else None
            if items is None:
                raise ValueError(f"{self.name}: expected a list such as 0,1, got {value!r}")
            item = Key(self.name, typing.get_args(base)[0])
            return [item.parse(entry) for entry in items if not (isinstance(entry, str) and not entry.strip())]
        if base is bool:
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in TRUE + FALSE:
                return text.lower() in TRUE
            raise ValueError(f"{self.name}: expected true or false, got {value!r}")
        if base in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and (base is float or isinstance(value, int)):
                return base(value)
            try:
                return base(text)
            except (TypeError, ValueError):
                expected = "a whole number" if base is int else "a number"
                raise ValueError(f"{self.name}: expected {expected}, got {value!r}") from None
        if isinstance(value, (str, Path)):
            return Path(value).expanduser() if base is Path else text
        raise ValueError(f"{self.name}: expected text, got {value!r}")


def _keys() -> dict[str, Key]:
    keys = {}
    for prefix, cls in (("", NodeConfig), ("policy.", PolicyConfig)):
        hints = typing.get_type_hints(cls)
        for item in fields(cls):
            if item.name != "policy":
                keys[prefix + item.name] = Key(prefix + item.name, hints[item.name])
    return keys


KEYS = _keys()


def resolve_key(text: str) -> Key:
    """`threads`, `policy.idle_minutes`, `idle-minutes` (a unique policy field) or `POLICY__IDLE_MINUTES`."""
    name = text.strip().lower().replace("__", ".").replace("-", "_")
    key = KEYS.get(name) or KEYS.get("policy." + name)
    if key is None:
        raise ValueError(f"unknown setting {text!r}; known: {', '.join(KEYS)}")
    return key


@functools.cache
def field_docs() -> dict[str, str]:
    """The docstring under each config field, by key, for `config show`."""
    docs, tree = {}, ast.parse(inspect.getsource(config_module))
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        prefix = "policy." if cls.name == "PolicyConfig" else ""
        for statement, following in zip(cls.body, cls.body[1:]):
            if isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr):
                if isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                    docs[prefix + statement.target.id] = " ".join(following.value.value.split())
    return docs


@dataclass(frozen=True)
class Source:
    kind: Literal["default", "file", "env", "flag"]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}".strip()


@dataclass
class Settings:
    """Values set by the file, the environment and flags (defaults are NodeConfig's own), with their sources."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)

    def set(self, key: Key, value: Any, source: Source) -> None:
        self.values[key.name], self.sources[key.name] = value, source

    def source(self, name: str, environ: Mapping[str, str] = os.environ) -> Source:
        if name in self.sources:
            return self.sources[name]
        if name == "data_dir" and environ.get("HEARTH_NODE_DIR"):
            return Source("env", "HEARTH_NODE_DIR")
        return Source("default")

    def config(self, require_url: bool = True) -> NodeConfig:
        """The validated NodeConfig; ValueError (one line) when a value is invalid or the URL is missing."""
        top = {name: value for name, value in self.values.items() if "." not in name}
        policy = {name.split(".", 1)[1]: value for name, value in self.values.items() if name.startswith("policy.")}
        if "coordinator_url" not in top:
            if require_url:
                raise ValueError("no coordinator URL: give it as `hearth join URL`, "
                                 "or save it with `hearth node config set coordinator_url URL`")  # fmt: skip
            top["coordinator_url"] = NO_URL
        return NodeConfig(**top, policy=PolicyConfig(**policy))

    def rows(self, environ: Mapping[str, str] = os.environ) -> list[tuple[str, Any, Source]]:
        """(key, effective value, source) for every setting, in NodeConfig's order."""
        values = self.config(require_url=False).to_json_dict()
        values.update({f"policy.{name}": value for name, value in values.pop("policy").items()})
        if values["coordinator_url"] == NO_URL:
            values["coordinator_url"] = None
        return [(name, values[name], self.source(name, environ)) for name in KEYS]


def read_file(path: Path) -> dict:
    """The raw TOML table of the config file ({} when there is none)."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _file_items(raw: dict, path: Path):
    """(key name, value) for each known setting in the raw file; unknown ones are logged and skipped."""
    policy = raw.get("policy") if isinstance(raw.get("policy"), dict) else {}
    items = [(name, value) for name, value in raw.items() if not (name == "policy" and isinstance(value, dict))]
    items += [(f"policy.{name}", value) for name, value in policy.items()]
    for name, value in items:
        if name in KEYS:
            yield KEYS[name], value
        else:
            logger.warning("%s: unknown setting %r ignored", path, name)


def load_settings(flags: Optional[Mapping[str, Any]] = None, environ: Mapping[str, str] = os.environ,
                  path: Optional[Path] = None) -> Settings:  # fmt: skip
    """Defaults < file < environment < flags. `flags` maps key names ("threads", "policy.idle_minutes") to
    values; None values are ignored. Raises ValueError naming where a bad value came from."""
    settings = Settings(path or config_path(environ))
    for key, value in _file_items(read_file(settings.path), settings.path):
        settings.set(key, _located(key, value, str(settings.path)), Source("file"))
    for key in KEYS.values():
        if environ.get(key.env, "").strip():
            settings.set(key, _located(key, environ[key.env], key.env), Source("env", key.env))
    for name, value in (flags or {}).items():
        if value is not None:
            key = KEYS[name]
            settings.set(key, _located(key, value, key.flag), Source("flag", key.flag))
    return settings


def _located(key: Key, value: Any, where: str) -> Any:
    try:
        return key.parse(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def set_in_file(path: Path, key: Key, value: Optional[str]) -> Any:
    """Validate `value` for `key` (None: remove it) against the file's other values, then write the file.
    Returns the typed value; ValueError (nothing written) when it is invalid."""
    raw = read_file(path)
    table = raw.setdefault("policy", {}) if key.name.startswith("policy.") else raw
    field_name = key.name.split(".")[-1]
    typed = None if value is None else key.parse(value)
    if isinstance(typed, Path):
        typed = typed.resolve()
    if typed is None:
        table.pop(field_name, None)
    else:
        table[field_name] = str(typed) if isinstance(typed, Path) else typed
    if not raw.get("policy", True):
        del raw["policy"]
    _validate_raw(raw, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(dumps_toml(raw), encoding="utf-8")
    os.replace(temporary, path)
    return typed


def _validate_raw(raw: dict, path: Path) -> None:
    settings = Settings(path)
    for key, value in _file_items(raw, path):
        settings.set(key, key.parse(value), Source("file"))
    settings.config(require_url=False)


HEADER = "# Hearth node settings. `hearth node config show` explains each; `hearth node config set KEY VALUE` edits.\n"


def dumps_toml(raw: dict) -> str:
    """TOML for scalars (and lists of them) at the top level and in one level of tables."""
    lines, tables = [HEADER], []
    for name, value in raw.items():
        if isinstance(value, dict):
            tables.append((name, value))
        else:
            lines.append(f"{_toml_key(name)} = {_toml_value(value)}\n")
    for name, table in tables:
        lines.append(f"\n[{_toml_key(name)}]\n")
        for sub, value in table.items():
            if isinstance(value, dict):
                raise ValueError(f"{name}.{sub}: nested tables are not supported")
            lines.append(f"{_toml_key(sub)} = {_toml_value(value)}\n")
    return "".join(lines)


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _toml_value(name)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan are valid TOML floats too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")
