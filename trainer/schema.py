"""Validated settings: the pydantic base model of every settings file, and one error listing all
of a file's problems.

Every settings file of the project (the training config, the evaluation options, sweep and study
files) is a `Schema` model: unknown keys are refused (`extra="forbid"`), types are checked
strictly (an int field takes no bool, string or float; a `Float` field takes an int, and a numeric
string, which is how YAML 1.1 reads `1e-4`), and NaN and infinities are refused in every float
field. `validate(cls, raw, source)` returns the model or raises `ConfigError` with one line per
problem, each starting with the dotted path of its field (`train.log_every: must be >= 1, got 0`).

Rules over several fields are model validators that raise `RuleError` with all their problems.
pydantic runs a model's validators only once its fields are valid, so `validate` drops every
invalid input and validates again until nothing more is found: the rules over the fields that
remain still run, and their problems join the list. A rule first asks `rules_apply(info, self,
*paths)`, which is false when a field it reads was dropped (the model then holds the default,
not the value written) or when the rule has already reported in an earlier round.

`parse_override` / `apply_overrides` read `section.field=value` overrides (the value as YAML),
the one syntax of `--set` and `--metric-option`.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails

from trainer.errors import PicklableError


class ConfigError(PicklableError, ValueError):
    """Settings that must not start a run; `problems` lists every issue found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class RuleError(PicklableError, ValueError):
    """Raised by a model validator: every problem its rules found, each naming its field."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _number_from_text(value: Any) -> Any:
    """A numeric string as a float (YAML 1.1 reads `1e-4`, without a dot, as a string); any other
    value unchanged, for the strict float check to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_number_from_text)]
"""A finite float field (NaN and inf are refused by `Schema`); takes ints and numeric strings."""


class Schema(BaseModel):
    """Base of every settings model; attribute docstrings become the field descriptions."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


def plain_name(value: str) -> str:
    """A field validator: a non-empty name without '/' (it names a folder)."""
    if not value or "/" in value:
        raise ValueError(f"must be a non-empty plain name, got {value!r}")
    return value


# --- one error for every problem ----------------------------------------------------------------

_STATE = "_schema_rounds"


@dataclass
class _Rounds:
    """What earlier rounds of `validate` found: dropped inputs and the models whose rules
    already reported."""

    dropped: set[str] = field(default_factory=set)
    reported: set[type] = field(default_factory=set)


def rules_apply(info: ValidationInfo, model: BaseModel, *paths: str) -> bool:
    """Whether the rules of `model` should run: not reported yet, and none of the dotted `paths`
    they read dropped as invalid (a dropped section drops every field in it)."""
    rounds = (info.context or {}).get(_STATE)
    if rounds is None:
        return True
    if type(model) in rounds.reported:
        return False
    return not any(p == d or p.startswith(d + ".") for p in paths for d in rounds.dropped)


def validate(
    cls: type[BaseModel], raw: Any, source: str = "config", context: dict | None = None
) -> Any:
    """`cls` validated from the mapping `raw`; ConfigError listing every problem otherwise.
    `context` reaches the validators (e.g. the folder that relative paths start from)."""
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping, got {raw!r}"], source)
    data = copy.deepcopy(raw)
    rounds = _Rounds()
    problems: list[str] = []
    while True:
        try:
            model = cls.model_validate(data, context={**(context or {}), _STATE: rounds})
        except ValidationError as err:
            progress = False
            for error in err.errors():
                cause = (error.get("ctx") or {}).get("error")
                if isinstance(cause, RuleError):
                    problems.extend(cause.problems)
                    owner = _model_at(cls, error["loc"])
                    progress = progress or owner not in rounds.reported
                    rounds.reported.add(owner)
                    continue
                problems.append(describe(cls, error))
                dropped = _drop(cls, data, error["loc"])
                if dropped is not None:
                    rounds.dropped.add(dropped)
                    progress = True
            if not progress:
                break
        else:
            if not problems:
                return model
            break
    raise ConfigError(list(dict.fromkeys(problems)), source)


def _drop(cls: type[BaseModel], data: dict, loc: tuple) -> str | None:
    """Remove the invalid input at `loc`: a field, or the whole entry of a mapping or list field
    that holds it (a model with one bad field inside a mapping goes as a whole, so that the
    model around it can still run its rules). Its dotted path, or None when nothing was there."""
    node, path = data, []
    model: type[BaseModel] | None = cls
    for part in loc:
        if not isinstance(part, str):  # an item of a list: drop the list
            break
        if not isinstance(node, dict) or part not in node:  # e.g. a required key that is missing
            return None
        path.append(part)
        if model is None:  # a key of a mapping of models: drop that entry
            break
        inner = _inner_model(model, part)
        if not isinstance(node[part], dict):
            break
        if inner is None and not _maps_to_models(model, part):
            break
        node, model = node[part], inner
    if not path:
        return None
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return ".".join(path)


def _maps_to_models(model: type[BaseModel], name: str) -> bool:
    """Whether field `name` of `model` is a mapping whose values are models."""
    info = model.model_fields.get(name)
    if info is None or typing.get_origin(info.annotation) is not dict:
        return False
    value = typing.get_args(info.annotation)[-1]
    return isinstance(value, type) and issubclass(value, BaseModel)


def _inner_model(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The model class of field `name` of `model` (None: not a field, or not a model)."""
    info = model.model_fields.get(name) if model is not None else None
    annotation = info.annotation if info is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], BaseModel):
        return members[0]  # `Model | None`
    return None


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model class that validates the value at `loc`, also inside mappings and lists of
    models (for `extra_forbidden`: the model the unknown key was given to)."""
    model = cls
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            continue  # a mapping key or list index: the model of the values stays
        inner = [
            a
            for a in (info.annotation, *typing.get_args(info.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not inner:
            break
        model = inner[0]
    return model


_EXPECTED = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "str",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}


def describe(cls: type[BaseModel], error: ErrorDetails) -> str:
    """One pydantic error as `dotted.path: what is wrong, got <value>`."""
    loc = error["loc"]
    path = ".".join(str(p) for p in loc)
    where = f"{path}: " if path else ""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_model_at(cls, loc[:-1]).model_fields))
        return f"{where}unknown key (known: {known})"
    if kind == "missing":
        return f"{where}required"
    if kind in _EXPECTED:
        got = f"{value!r} ({type(value).__name__})" if kind not in ("model_type",) else repr(value)
        return f"{where}expected {_EXPECTED[kind]}, got {got}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"{where}must be {_BOUNDS[kind]} {bound}, got {value}"
    if kind == "finite_number":
        return f"{where}must be a finite number, got {value}"
    if kind == "literal_error":
        return f"{where}{value!r} is not one of {ctx.get('expected')}"
    if kind in ("too_short", "string_too_short"):
        return f"{where}must not be empty"
    if kind == "value_error":
        return where + error["msg"].removeprefix("Value error, ")
    return f"{where}{error['msg']}, got {value!r}"


# --- overrides ----------------------------------------------------------------------------------


def parse_override(text: str, flag: str = "--set") -> tuple[list[str], Any]:
    """`"train.num_steps=100"` -> (["train", "num_steps"], 100); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError([f"{flag} {text!r}: expected key=value, e.g. train.num_steps=100"])
    key, raw_value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError([f"{flag} {text!r}: empty key"])
    return path, yaml.safe_load(raw_value) if raw_value.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `section.field=value` override set."""
    merged = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {text!r}: {part} is not a section"])
        node[path[-1]] = value
    return merged
