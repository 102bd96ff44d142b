"""Reading funnel definitions from YAML, with errors that name the file, line and field."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from leadstage.funnels._engine import Funnel, FunnelSource
from leadstage.funnels._model import FunnelDefinitionError
from leadstage.funnels._spec import LOADING, FunnelSpec, check_references

Loc = tuple[str | int, ...]
PRESETS_PACKAGE = "leadstage.funnels"
PRESETS_DIRECTORY = "presets"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans (only true/false, so ``country: NO`` stays Norway); dates stay strings."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's own constructors fail with plain Python errors on an explicit tag
        # that does not fit its value (``!!int abc`` raises ValueError, ``!!bool maybe``
        # KeyError), which carry no position: give them the value's line.
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception as err:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            problem = (
                f"{node.value!r} is not a valid {tag}"
                if isinstance(node, yaml.ScalarNode)
                else f"not a valid {tag}: {err}"
            )
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from err


_DROPPED_TAGS = frozenset({"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"})
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _lines(node: yaml.Node, file: str) -> dict[Loc, int]:
    """The 1-based line of every mapping key and sequence item, by its path.

    An alias is the very node of its anchor. Each node is walked once, as aliases of
    aliases would otherwise expand exponentially: paths below a node's second use are
    not listed, and :func:`_line` gives them the line of their nearest listed parent.
    A node inside itself (``&a [*a]``) is an error rather than an endless walk.
    """
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}
    walked: set[int] = set()
    open_nodes: set[int] = set()  # the nodes being walked: the current one's ancestors

    def walk(current: yaml.Node, path: Loc) -> None:
        if id(current) in open_nodes:
            raise FunnelDefinitionError(
                file, _line(lines, path), _field(path), "a recursive alias (inside its anchor)"
            )
        if id(current) in walked:
            return
        walked.add(id(current))
        open_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise FunnelDefinitionError(
                        file,
                        key_node.start_mark.line + 1,
                        _field(path),
                        "a key must be a single value, not a list or a mapping",
                    )
                key: Loc = (*path, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise FunnelDefinitionError(
                        file, line, _field(key), f"duplicate key {key_node.value!r}"
                    )
                lines[key] = line
                walk(value_node, key)
        elif isinstance(current, yaml.SequenceNode):
            for i, item in enumerate(current.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))
        open_nodes.discard(id(current))

    walk(node, ())
    return lines


def _field(path: Iterable[str | int]) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _line(lines: dict[Loc, int], path: Loc) -> int:
    """The line of the deepest part of ``path`` that is in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def parse_funnel(text: str, file: str = "<string>", *, stored: bool = False) -> Funnel:
    """One funnel from the text of a definition file.

    Raises :class:`FunnelDefinitionError` naming ``file`` (and the line when known) for
    whatever is wrong with the text: callers (engine start, SIGHUP reload, replay) rely
    on that one error type. ``stored``: the text of a version registered already, which
    is parsed as it was registered, without the checks added since (see ``LOADING``).
    """
    try:
        return _parse(text, file, stored=stored)
    except FunnelDefinitionError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        raise FunnelDefinitionError(file, line, "(yaml)", str(err.problem or err)) from None
    except yaml.YAMLError as err:
        raise FunnelDefinitionError(file, None, "(yaml)", str(err)) from None
    except RecursionError:
        # PyYAML composes (and pydantic validates) nested values recursively.
        raise FunnelDefinitionError(file, None, "(yaml)", "nested too deeply") from None
    except Exception as err:
        # Not expected, but the file is what to look at: keep the cause for the traceback.
        raise FunnelDefinitionError(
            file, None, "(top level)", f"cannot be loaded: {type(err).__name__}: {err}"
        ) from err


def _parse(text: str, file: str, *, stored: bool) -> Funnel:
    node = yaml.compose(text, Loader=_Loader)
    if node is None:
        raise FunnelDefinitionError(file, 1, "(top level)", "the file is empty")
    lines = _lines(node, file)
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    try:
        spec = FunnelSpec.model_validate(data, context=None if stored else LOADING)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc: Loc = tuple(part for part in first["loc"] if part != "[key]")
        message = first["msg"].removeprefix("Value error, ")
        raise FunnelDefinitionError(file, _line(lines, loc), _field(loc), message) from None
    problems = check_references(spec)
    if problems:
        path, message = problems[0]
        raise FunnelDefinitionError(file, _line(lines, path), _field(path), message)
    return Funnel(spec, FunnelSource(file, text, lines.get(("version",))))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FunnelDefinitionError(
            str(path), None, "(file)", f"not UTF-8 text (byte {err.start})"
        ) from None
    except OSError as err:
        raise FunnelDefinitionError(str(path), None, "(file)", err.strerror or str(err)) from None


def _name_line(text: str) -> int | None:
    match = re.search(r"^name\s*:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _add(
    funnels: dict[str, Funnel], where: dict[str, str], funnel: Funnel, file: str, text: str
) -> None:
    if funnel.name in where:
        raise FunnelDefinitionError(
            file,
            _name_line(text),
            "name",
            f"funnel {funnel.name!r} is also defined in {where[funnel.name]}",
        )
    funnels[funnel.name] = funnel
    where[funnel.name] = file


@functools.cache
def _presets() -> tuple[Funnel, ...]:
    funnels: dict[str, Funnel] = {}
    where: dict[str, str] = {}
    directory = resources.files(PRESETS_PACKAGE).joinpath(PRESETS_DIRECTORY)
    for entry in sorted(directory.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".yaml"):
            text = entry.read_text(encoding="utf-8")
            file = f"{PRESETS_DIRECTORY}/{entry.name}"
            _add(funnels, where, parse_funnel(text, file), file, text)
    return tuple(funnels.values())


def load_presets() -> dict[str, Funnel]:
    """The funnels shipped with LeadStage, by name (in file-name order)."""
    return {funnel.name: funnel for funnel in _presets()}


def load_funnels(directory: Path | None = None) -> dict[str, Funnel]:
    """The presets, plus (or replaced by, when the name is the same) ``directory/*.yaml``.

    Two files of ``directory`` defining the same funnel name are an error.
    """
    funnels = load_presets()
    if directory is None:
        return funnels
    if not directory.is_dir():
        raise FileNotFoundError(f"no funnel directory {directory}")
    where: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        text = _read(path)
        funnel = parse_funnel(text, str(path))
        _add(funnels, where, funnel, str(path), text)
    return funnels
