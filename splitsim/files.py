"""One strict reader for every YAML and JSON file splitsim reads: scenarios, clusters, GPUs, fabrics,
hardware profiles, model and measurement `config.json`.

Each defect is one `ScenarioError` line naming the file, the line where there is one, and what would be
valid: an unreadable path, non-UTF-8 bytes, malformed text, a duplicated key, YAML aliases that expand
enormously (a "billion laughs"), nesting deeper than any config needs, or a top level that is not a mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from splitsim.errors import ScenarioError

MAX_BYTES = 10_000_000  # the largest shipped file is a few kB
MAX_DEPTH = 100  # levels of nested mappings and lists
MAX_ALIASED = 10_000  # values YAML aliases may add to a document
_KINDS = {type(None): "null (empty)", bool: "a boolean", int: "a number", float: "a number", str: "a string",
          list: "a list"}


def cut(text: str, limit: int = 60) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(path: str | Path) -> str:
    """A path as messages print it: in full unless absurdly long."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:50]}…{text[-50:]}"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this loader will not build."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing duplicate keys, deep nesting and aliases that expand enormously."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) → values in it once its aliases are expanded
        self._aliased = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _Refused("an alias inside its own anchor (a value that holds itself)", event.start_mark)
            self._aliased += self._sizes[id(node)]
            if self._aliased > MAX_ALIASED:
                raise _Refused(f"aliases expand to more than {MAX_ALIASED:,} values (write them out)", event.start_mark)
            return node
        nests = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nests and self._depth >= MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep (at most {MAX_DEPTH})", event.start_mark)
        self._depth += nests
        node = super().compose_node(parent, index)
        self._depth -= nests
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first_line: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in first_line:
                    raise _Refused(f"duplicate key {cut(repr(key.value))} (first at line "
                                   f"{first_line[key.tag, key.value]}; give each key once)", key.start_mark)
                first_line[key.tag, key.value] = key.start_mark.line + 1
        return node


def parse_yaml_text(text: str, source: str) -> Any:
    """The value of YAML `text` (a file's, or a `--set` value); `source` heads the one-line error."""
    loader = None
    try:
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}:" if mark is not None else ""
        kind = "" if isinstance(err, _Refused) else " malformed YAML:"
        problem = ", ".join(part for part in (err.context, err.problem) if part)
        raise ScenarioError(f"{source}:{where}{kind} {cut(problem, 120)}") from None
    except yaml.reader.ReaderError as err:  # a control character
        line = text[:err.position].count("\n") + 1
        raise ScenarioError(f"{source}: line {line}: character #x{err.character:04x} is not allowed in YAML") from None
    except (yaml.YAMLError, ValueError, OverflowError) as err:  # e.g. a date 2024-13-45, a 5,000-digit number
        raise ScenarioError(f"{source}: malformed YAML: {cut(str(err).splitlines()[0], 120)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, what: str, fields: str = "") -> dict[str, Any]:
    """The mapping a YAML file holds; `what` names the kind of file, `fields` a few of its keys."""
    return _mapping(parse_yaml_text(_read_text(path, what), shown(path)), path, what, fields, "YAML")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"duplicate key {cut(repr(key))} (give each key once)")
        mapping[key] = value
    return mapping


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (give a finite number)")


def read_json_file(path: str | Path, what: str, fields: str = "") -> dict[str, Any]:
    """The object a JSON file holds, refusing duplicate keys, NaN/Infinity and deep nesting."""
    text, where = _read_text(path, what), shown(path)
    too_deep = f"{where}: nested more than {MAX_DEPTH} levels deep (at most {MAX_DEPTH})"
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ScenarioError(f"{where}: line {err.lineno}: malformed JSON: {err.msg}") from None
    except ValueError as err:  # from the two hooks above
        raise ScenarioError(f"{where}: {err}") from None
    except RecursionError:  # deeper than the interpreter's stack
        raise ScenarioError(too_deep) from None
    level, depth = [data], 0
    while level := [item for item in level if isinstance(item, (dict, list))]:  # one level of nesting a turn
        depth += 1
        if depth > MAX_DEPTH:
            raise ScenarioError(too_deep)
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)]
    return _mapping(data, path, what, fields, "JSON")


def _read_text(path: str | Path, what: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the name
        reason = getattr(err, "strerror", None) or str(err)
        raise ScenarioError(f"{shown(path)}: cannot read the {what} file ({reason})") from None
    if len(data) > MAX_BYTES:
        raise ScenarioError(f"{shown(path)}: over {MAX_BYTES // 10**6} MB, too large for a {what} file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ScenarioError(f"{shown(path)}: line {line}: byte 0x{data[err.start]:02x} is not UTF-8 "
                            f"(save the {what} file as UTF-8 text)") from None


def _mapping(data: Any, path: str | Path, what: str, fields: str, language: str) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    kind = _KINDS.get(type(data), f"a {type(data).__name__}")
    hint = f" ({fields})" if fields else ""
    raise ScenarioError(f"{shown(path)}: a {what} file holds a {language} mapping of fields{hint}, not {kind}")
