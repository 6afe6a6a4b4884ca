"""The one argument system of hf_deq's scripts: ``FlagParser``, a ``transformers.HfArgumentParser`` that turns
typed dataclasses into flags and parsed flags back into dataclass instances.

A field's ``metadata`` says what its flag is (``flag(...)`` writes it): ``help``, ``choices`` (a list, or a
function read when the parser is built, so that registrations count), ``parse`` (the text-to-value function,
else the annotation's type), ``group`` (the ``--help`` section), ``unset_default`` (what ``--help`` says an unset
flag means), ``nargs`` (``"+"``: a list field whose flag takes one or more values, ``--x a b``, each converted by
``parse`` or the list's item type and checked against ``choices``), ``range`` (a ``flag_ranges.Range`` the value
must lie in, checked after parsing) and ``flag=False`` for a field that is no flag (a value resolved by the
checks). ``bool`` fields are switches (``--x``; ``--x/--no-x`` when their default is ``None``).

``--config FILE`` (JSON or YAML) goes through the same parser: each value is converted by its flag's function
and checked against its choices, an unknown key is refused naming the key and the file, and the command line
overrides the file. Every refusal is argparse's one ``prog: error: ...`` line, exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from .flag_ranges import check_flag_ranges


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every flag's default: ``(default: X)`` after its text, unless the text already says what
    its default is; an unset flag shows its action's ``unset_default`` (e.g. "the preset's"), else "none"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        unset = getattr(action, "unset_default", "none")
        return f"{text} (default: {unset if action.default is None else '%(default)s'})"


def json_object(text: str) -> dict[str, Any]:
    """The text-to-value function of the JSON-object flags (``text``: the flag's text)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def flag(default: Any = None, help: str = "", **metadata: Any) -> Any:
    """A dataclass field that is a flag: its ``default``, ``help`` text and further ``metadata`` (``choices``,
    ``parse``, ``group``, ``unset_default``, ``metavar``, ``nargs``, ``range``, ``flag``)."""
    return field_with(default, {"help": help, **metadata})


def field_with(default: Any, metadata: Any) -> Any:
    """A dataclass field with ``default`` (a list or dict default is copied for each instance) and ``metadata``."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _without_none(annotation: Any) -> Any:
    """A field annotation, ``X | None`` read as ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else str
    return annotation


def _value_type(annotation: Any) -> Any:
    """The type of a field annotation, ``X | None`` read as ``X``."""
    annotation = _without_none(annotation)
    return typing.get_origin(annotation) or annotation


def _item_type(annotation: Any) -> Any:
    """The type of one value of a ``list[X]`` annotation (``str`` when it names none)."""
    args = typing.get_args(_without_none(annotation))
    return args[0] if args else str


def _argument_options(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """The ``add_argument`` keywords of ``field`` annotated ``annotation``."""
    value_type = _value_type(annotation)
    meta = field.metadata
    options: dict[str, Any] = {"default": _field_default(field), "help": meta.get("help", "")}
    if options["default"] is dataclasses.MISSING:
        options.update(required=True, default=None)
    if "metavar" in meta:
        options["metavar"] = meta["metavar"]
    if value_type is bool:
        options["action"] = argparse.BooleanOptionalAction if field.default is None else "store_true"
        return options
    choices = meta.get("choices")
    options["choices"] = choices() if callable(choices) else choices
    parse = meta.get("parse")
    if "nargs" in meta:
        options["nargs"] = meta["nargs"]
        parse = parse or _item_type(annotation)
    if parse is None:
        parse = json_object if value_type is dict else json.loads if value_type is list else value_type
    options["type"] = None if parse is str else parse
    return options


class FlagParser(HfArgumentParser):
    """Typed dataclasses in (``dataclass_types``), typed dataclass instances out (``parse_into_dataclasses``);
    ``config_file=True`` adds ``--config FILE``; ``script`` is the name a recipe's ``_script`` key must give;
    other keywords go to ``argparse.ArgumentParser`` (``formatter_class`` defaults to ``DefaultsHelpFormatter``)."""

    def __init__(
        self, dataclass_types: Any, *, config_file: bool = False, script: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        super().__init__(dataclass_types, **kwargs)
        self.script = script or self.prog
        self.config_file = config_file
        if config_file:
            self.add_argument(
                "--config",
                metavar="JSON",
                default=None,
                help="a JSON (or YAML) file of flag values (see scripts/configs/); flags on the command line "
                "override it",
            )

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        if dtype.__module__.startswith("transformers."):  # transformers' own (``TrainingArguments``): its way
            return super()._add_dataclass_arguments(dtype)
        hints = typing.get_type_hints(dtype)
        default_group = getattr(dtype, "_argument_group_name", None)
        for field in dataclasses.fields(dtype):
            if not field.init or field.metadata.get("flag", True) is False:
                continue
            name = field.metadata.get("group", default_group)
            target = self if name is None else self._groups.setdefault(name, self.add_argument_group(name))
            action = target.add_argument(f"--{field.name}", **_argument_options(field, hints[field.name]))
            if "unset_default" in field.metadata:
                action.unset_default = field.metadata["unset_default"]

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """argparse's choice check, with a "did you mean" for a near miss."""
        choices = action.choices
        if choices is not None and value not in choices and isinstance(value, str):
            names = [str(c) for c in choices]
            if close := difflib.get_close_matches(value, names, n=1):
                listed = ", ".join(map(repr, choices))
                message = f"invalid choice: {value!r}; did you mean {close[0]!r}? (choose from {listed})"
                raise argparse.ArgumentError(action, message)
        super()._check_value(action, value)

    def flag_actions(self) -> dict[str, argparse.Action]:
        """``{dest: action}`` of every flag (not ``--help`` or ``--config``)."""
        return {a.dest: a for a in self._actions if a.dest not in ("help", "config")}

    def parse_into_dataclasses(
        self, argv: list[str] | None = None, remaining: bool = False
    ) -> tuple[Any, ...]:
        """One instance of each dataclass from ``argv`` (``None``: ``sys.argv``), a ``--config`` file's values
        under the command line's, each flag with a ``range`` checked (one ``error:`` line naming the first outside
        its range). With ``remaining`` (argparse's ``parse_known_args``: a script that passes flags on to another,
        e.g. after ``--``), the flags no dataclass knows come last, as a list; without it they are refused."""
        if self.config_file:
            pre = argparse.ArgumentParser(add_help=False)
            pre.add_argument("--config", default=None)
            path = pre.parse_known_args(argv)[0].config
            if path is not None:
                with self.refusing(argparse.ArgumentTypeError, prefix=""):
                    self.set_defaults(**self.read_config_file(path))
        namespace, rest = self.parse_known_args(argv) if remaining else (self.parse_args(argv), [])
        values = vars(namespace)
        instances: list[Any] = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init and f.name in values}
            instances.append(dtype(**{name: values[name] for name in names}))
        self._check_ranges(instances)
        return (*instances, rest) if remaining else tuple(instances)

    def _check_ranges(self, instances: list[Any]) -> None:
        """``check_flag_ranges`` of each instance: the first value outside its field's ``range`` is this
        parser's ``error:`` line (``argument --x: must be ..., got V``)."""
        with self.refusing():
            for instance in instances:
                check_flag_ranges(instance)

    def refusing(
        self, *errors: type[Exception], prefix: str = "argument "
    ) -> contextlib.AbstractContextManager:
        """``refusing(self, ...)``: around checks, their refusals become this parser's ``error:`` line."""
        return refusing(self, *errors, prefix=prefix)

    def read_config_file(self, path: str | os.PathLike) -> dict[str, Any]:
        """The flag values of the recipe ``path`` (JSON, or YAML by its suffix; keys are flag names; ``_``-keys
        are notes; ``_script``, when given, must name this parser's script), each converted and checked by its
        flag. A bad file raises ``argparse.ArgumentTypeError`` naming the file."""
        where = f"--config {path}"
        data = _load_recipe(Path(path), where)
        meant_for = data.get("_script")
        if meant_for is not None and meant_for != self.script:
            raise argparse.ArgumentTypeError(f"{where} is a config for {meant_for}, not for {self.script}")
        actions = self.flag_actions()
        values = {}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key not in actions:
                raise argparse.ArgumentTypeError(
                    f"{where}: unknown key {key!r}; the keys are the flags of {self.script}: {sorted(actions)}"
                )
            values[key] = self._file_value(actions[key], value, where)
        return values

    def _file_value(self, action: argparse.Action, value: Any, where: str) -> Any:
        """``value`` of the file's key ``action.dest``, converted and checked as the command line would."""
        key = action.dest
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(
                    f"{where}: {key!r} is a switch, so it takes true or false, got {value!r}"
                )
            return value
        if action.nargs in ("+", "*"):  # several values: a list of them
            if not isinstance(value, list) or (action.nargs == "+" and not value):
                raise argparse.ArgumentTypeError(f"{where}: {key!r} takes a list of values, got {value!r}")
            return [_converted(action, item, where) for item in value]
        if value is None:  # null: the flag left unset, which a flag with a default cannot be
            if action.default is not None:
                raise argparse.ArgumentTypeError(
                    f"{where}: {key!r} is null (None), but --{key} cannot be unset; leave the key out for its "
                    f"default {action.default!r}"
                )
            return None
        return _converted(action, value, where)


def _load_recipe(path: Path, where: str) -> dict[str, Any]:
    """The mapping a recipe file holds (JSON, or YAML for ``.yaml``/``.yml``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{where}: no such file") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise argparse.ArgumentTypeError(f"{where}: not valid YAML ({err})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(
            f"{where}: expected a JSON object of flag values, got {type(data).__name__}"
        )
    return data


def _converted(action: argparse.Action, value: Any, where: str) -> Any:
    """A file's non-null ``value`` through ``action``'s own conversion (its ``type`` on the value's text, as the
    command line gives it) and choices; a JSON number must fit the flag's type as it is."""
    key, parse = action.dest, action.type
    structured = parse in (json.loads, json_object)
    if isinstance(value, bool) or (isinstance(value, (list, dict)) and not structured):
        raise argparse.ArgumentTypeError(f"{where}: {key!r} got {value!r}, which --{key} does not take")
    if parse is int and isinstance(value, float):
        raise argparse.ArgumentTypeError(f"{where}: {key!r} must be an integer, got {value!r}")
    text = json.dumps(value) if structured or not isinstance(value, str) else value
    try:
        converted = parse(text) if parse is not None else text
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        message = f"must be a JSON object, got {value!r}" if parse is json_object else f"got {value!r}: {err}"
        raise argparse.ArgumentTypeError(f"{where}: {key!r} {message}") from None
    if action.choices is not None and converted not in action.choices:
        raise argparse.ArgumentTypeError(
            f"{where}: {key!r} must be one of {list(action.choices)}, got {value!r}"
        )
    return converted


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def merged_dataclass(
    name: str,
    parts: list[Any],
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
    module: str = __name__,
    **kwargs: Any,
) -> Any:
    """One dataclass named ``name`` with the fields of every dataclass of ``parts`` in order (each field keeps
    its ``--help`` section: ``group``, else its class's ``_argument_group_name``), ``defaults`` and ``helps``
    (by field name) replacing theirs; ``module`` is its ``__module__``; ``kwargs`` go to ``make_dataclass``."""
    fields: list[tuple[str, Any, dataclasses.Field]] = []
    for part in parts:
        hints = typing.get_type_hints(part)
        group = getattr(part, "_argument_group_name", None)
        for field in dataclasses.fields(part):
            metadata = dict(field.metadata)
            if group is not None:
                metadata.setdefault("group", group)
            if helps and field.name in helps:
                metadata["help"] = helps[field.name]
            default = (defaults or {}).get(field.name, _field_default(field))
            fields.append((field.name, hints[field.name], field_with(default, metadata)))
    merged = dataclasses.make_dataclass(name, fields, **kwargs)
    merged.__module__ = module
    return merged


@contextlib.contextmanager
def refusing(
    parser: argparse.ArgumentParser, *errors: type[Exception], prefix: str = "argument "
) -> Iterator[None]:
    """Around checks: an ``InputError`` (``FlagError`` included) becomes ``parser``'s one ``error:`` line naming
    its flag (exit status 2), and so does one of ``errors`` (its text after ``prefix``)."""
    from ..data.errors import InputError

    try:
        yield
    except InputError as err:
        parser.error(f"argument {err.flag}: {' '.join(str(err).split())}")
    except errors as err:
        parser.error(f"{prefix}{err}")


__all__ = [
    "DefaultsHelpFormatter",
    "FlagParser",
    "field_with",
    "flag",
    "json_object",
    "merged_dataclass",
    "refusing",
]
