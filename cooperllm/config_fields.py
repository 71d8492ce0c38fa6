"""Command-line options generated from typed config fields, so an option's type, bounds, default and help are
written once, on the field.

Two kinds of owner:

* a pydantic model (:class:`cooperllm.protocol.RunConfig`): each field's annotation and constraints give the
  option's parsing and bounds, its ``description`` the help, its default the default;
* a dataclass whose fields are made with :func:`config_field` (``cooperllm_app.simulation.config.SimConfig``). A
  field made with ``of=(Model, name)`` *is* that model field under the same name: type, bounds, help and (unless
  overridden, which is then a visible, deliberate difference) default all come from the model.

``add_config_options(parser, owner, names, defaults=...)`` adds one ``--name-with-dashes`` option per field (``dest``
is the field name, so ``vars(args)`` maps straight back onto the owner); ``defaults`` lets a command pick its own
default for a field (a demo sized to finish in minutes) without writing the option again. A value outside the
model's bounds is refused while parsing, with the model's own message, instead of after a run has started.

The core imports nothing first-party here: any side's entry point may use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

# keys of a config_field's metadata
_HELP, _OF, _FLAG, _UNSET, _CHOICES, _PARSE = "help", "of", "flag", "unset", "choices", "parse"


def config_field(
    default: Any = dataclasses.MISSING,
    *,
    help: str | None = None,
    of: tuple[type[BaseModel], str] | None = None,
    flag: str | None = None,
    unset: str | None = None,
    choices: Iterable[str] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field that carries its own option: ``help`` text, ``flag`` (default ``--name-with-dashes``),
    ``unset`` (what a ``None`` or empty default means, shown as the default in the help), ``choices`` and ``parse``
    (text → value; a ValueError becomes an argparse error).

    ``of=(Model, name)``: the field is the pydantic model's field ``name``: its default, help and bounds come from
    the model; ``default`` given here overrides the model's (keep such differences few and say why next to them).
    """
    if of is not None:
        model, name = of
        info = model.model_fields[name]
        if default is dataclasses.MISSING:
            default = info.default
        help = help or info.description
    if not help:
        raise ValueError("a config field needs help text (or of= a model field with a description)")
    meta = {_HELP: help, _OF: of, _FLAG: flag, _UNSET: unset, _PARSE: parse}
    meta[_CHOICES] = tuple(choices) if choices is not None else None
    return dataclasses.field(default=default, metadata=meta)


def option_flag(owner: type, name: str) -> str:
    """The option that sets field ``name`` of ``owner``: the field's own flag, else ``--name-with-dashes``."""
    if dataclasses.is_dataclass(owner):
        flag = _dataclass_fields(owner)[name].metadata.get(_FLAG)
        if flag:
            return flag
    return "--" + name.replace("_", "-")


def model_fields_of(owner: type) -> dict[str, tuple[type[BaseModel], str]]:
    """The fields of the dataclass ``owner`` that are a model's field: name → (model, the model's field name)."""
    return {name: f.metadata[_OF] for name, f in _dataclass_fields(owner).items() if f.metadata.get(_OF)}


def option_names(owner: type) -> list[str]:
    """The fields of ``owner`` that have an option (those with help text), in declaration order."""
    return [name for name, spec in _specs(owner).items() if spec[_HELP]]


def owner_defaults(owner: type) -> dict[str, Any]:
    """Every field's default (fields without one are left out)."""
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner) if f.default is not dataclasses.MISSING}
    return {name: info.default for name, info in owner.model_fields.items() if not info.is_required()}


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    owner: type,
    names: Iterable[str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One option per field of ``owner`` (a pydantic model or a dataclass of :func:`config_field` fields), in
    ``names``' order (default: every field that has help, in declaration order). ``defaults`` overrides the field's
    default for this parser; a field with neither is a required option."""
    defaults = dict(defaults or {})
    specs = _specs(owner)
    if names is None:
        names = option_names(owner)
    for name in names:
        spec = specs[name]
        default = defaults.get(name, spec["default"])
        kwargs: dict[str, Any] = {"dest": name, "help": _help_text(spec, default)}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        convert = spec["convert"]
        if convert is not None:
            kwargs["type"] = convert
        if spec[_CHOICES]:
            kwargs["choices"] = list(spec[_CHOICES])
        parser.add_argument(option_flag(owner, name), **kwargs)


def _help_text(spec: dict[str, Any], default: Any) -> str:
    if default is dataclasses.MISSING:
        return spec[_HELP]
    if default is None or default == "":
        return f"{spec[_HELP]} (default {spec[_UNSET]})" if spec[_UNSET] else spec[_HELP]
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{spec[_HELP]} (default {shown})"


def _dataclass_fields(owner: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(owner)}


def _specs(owner: type) -> dict[str, dict[str, Any]]:
    """Per field: help, flag, unset, choices, default and the text → value converter (None: keep the text)."""
    out: dict[str, dict[str, Any]] = {}
    if dataclasses.is_dataclass(owner):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            meta = dict(f.metadata)
            spec = {k: meta.get(k) for k in (_HELP, _FLAG, _UNSET, _CHOICES)}
            spec["default"] = f.default
            of = meta.get(_OF)
            if meta.get(_PARSE) is not None:
                spec["convert"] = _checked(meta[_PARSE])
            elif of is not None:
                spec["convert"] = _model_value(*of)
                spec[_CHOICES] = spec[_CHOICES] or _literal_choices(of[0].model_fields[of[1]].annotation)
            else:
                spec["convert"] = _plain_type(hints[f.name])
            out[f.name] = spec
        return out
    for name, info in owner.model_fields.items():
        out[name] = {
            _HELP: info.description,
            _FLAG: None,
            _UNSET: None,
            _CHOICES: _literal_choices(info.annotation),
            "default": dataclasses.MISSING if info.is_required() else info.default,
            "convert": _model_value(owner, name),
        }
    return out


def _model_value(model: type[BaseModel], name: str) -> Callable[[str], Any]:
    """Text → the model field's value, by the model's own validation (types, bounds, the field's validators)."""
    info = model.model_fields[name]

    def convert(text: str) -> Any:
        try:
            validated = model.__pydantic_validator__.validate_assignment(model.model_construct(), name, text)
            return getattr(validated, name)
        except ValidationError as exc:
            errors = [e for e in exc.errors() if e["loc"][:1] == (name,)]
            if not errors:  # only a check across fields failed, against the others' defaults: not this option's
                return TypeAdapter(info.rebuild_annotation()).validate_python(text)
            said = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors)
            raise argparse.ArgumentTypeError(f"{text!r}: {said}") from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A field's own parser, its ValueError shown as the option's error (argparse would hide the message)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _plain_type(hint: Any) -> Callable[[str], Any] | None:
    """int, float or str (also ``X | None``); None for str: argparse keeps the text."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    if len(args) == 1 and args[0] in (int, float):
        return args[0]
    if len(args) == 1 and args[0] is str:
        return None
    raise TypeError(f"no option type for {hint!r}: give the field a parse=")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _literal_choices(annotation: Any) -> tuple[str, ...] | None:
    if typing.get_origin(annotation) is Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    return None
