"""Read YAML into plain values while remembering the line of every key path.

The strict configuration loader needs what PyYAML's ``safe_load`` hides: the line each
value came from (so an error can say ``forwarder.yaml:23``) and duplicate keys (which
``safe_load`` silently collapses to the last one). A merge key (``<<: *base``) followed
by a key of its own overrides the merged value, as YAML intends; only keys written twice
in one mapping are duplicates.

The input is bounded, so a hostile or broken file is refused in words instead of
exhausting memory or the stack: at most :data:`MAX_BYTES` of text, :data:`MAX_DEPTH`
levels of nesting (after aliases are followed), :data:`MAX_ALIASES` alias uses and
:data:`MAX_NODES` values in all once aliases are expanded (no "billion laughs").
"""

from __future__ import annotations

import os
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIASES = 1000
MAX_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"
TOO_LARGE = f"the file is larger than {MAX_BYTES // 1024} KiB; a configuration is a few KiB"


class YamlProblem(Exception):
    """A syntax error, a duplicate key or a bound passed, with its 1-based line."""

    def __init__(self, line: int | None, path: Path, message: str):
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def _line(node: yaml.Node | yaml.Event) -> int | None:
    mark = node.start_mark
    return mark.line + 1 if mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts nesting and alias uses as it goes."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlProblem(_line(self.peek_event()), (),
                                  f"more than {MAX_ALIASES} alias uses (*name); refusing to "
                                  "expand them")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(_line(self.peek_event()), (),
                                  f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_bounded(path: str | os.PathLike[str]) -> str:
    """The text of a file of at most :data:`MAX_BYTES` (a larger one is never read whole)."""
    try:
        with open(path, "rb") as fp:
            raw = fp.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlProblem(None, (), f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_BYTES:
        raise YamlProblem(None, (), TOO_LARGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(None, (), f"not UTF-8 text: {exc}") from exc


def load_with_lines(text: str, as_written: dict[Path, str] | None = None,
                    ) -> tuple[Any, dict[Path, int], list[YamlProblem]]:
    """Parse ``text``; return the value, ``{key path: line}``, and duplicate-key problems.

    A syntax error or a bound passed raises :class:`YamlProblem`. Duplicate keys are
    reported but do not stop parsing, so a single run lists every problem in the file.
    ``as_written``, if given, receives the text of every unquoted scalar that YAML read as
    something other than a string (``NO`` is false, ``012345`` an octal number), by key
    path: where a value is compared with text, it is compared as written.
    """
    if len(text) > MAX_BYTES:
        raise YamlProblem(None, (), TOO_LARGE)
    try:
        loader = _BoundedLoader(text)  # a character YAML refuses is found here
    except yaml.reader.ReaderError as exc:
        raise YamlProblem(text.count("\n", 0, exc.position) + 1, (),
                          f"a character YAML does not allow, U+{exc.character:04X} "
                          "(not printable): remove it") from exc
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlProblem(line, (), f"YAML syntax error: {problem}") from exc
    finally:
        loader.dispose()
    lines: dict[Path, int] = {}
    problems: list[YamlProblem] = []
    if node is None:
        return None, lines, problems
    constructor = yaml.constructor.SafeConstructor()
    budget = [MAX_NODES]

    def scalar(n: yaml.Node) -> Any:
        return constructor.construct_object(n, deep=True)

    def convert(n: yaml.Node, path: Path, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise YamlProblem(_line(n), path, f"more than {MAX_NODES} values once aliases "
                              "are expanded; refusing to expand them")
        if depth > MAX_DEPTH:
            raise YamlProblem(_line(n), path, f"nested more than {MAX_DEPTH} levels deep "
                              "(through aliases)")
        lines.setdefault(path, _line(n) or 0)
        if isinstance(n, yaml.MappingNode):
            own = sum(1 for k, _v in n.value if k.tag != MERGE_TAG)
            try:
                constructor.flatten_mapping(n)
            except yaml.YAMLError as exc:
                raise YamlProblem(_line(n), path, f"bad merge key: {exc}") from exc
            merged = len(n.value) - own  # flatten_mapping puts merged pairs first
            out: dict[Any, Any] = {}
            written: set[str] = set()
            for i, (key_node, value_node) in enumerate(n.value):
                key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    problems.append(YamlProblem(_line(key_node), path,
                                                f"unusable key {key!r}"))
                    continue
                key = str(key)
                child = (*path, key)
                if i >= merged:  # written here: overrides a merged value, never repeats
                    if key in written:
                        problems.append(YamlProblem(_line(key_node), child,
                                                    "duplicate key (the YAML repeats it)"))
                    written.add(key)
                lines[child] = _line(key_node) or 0
                out[key] = convert(value_node, child, depth + 1)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(item, (*path, i), depth + 1) for i, item in enumerate(n.value)]
        value = scalar(n)
        if as_written is not None and value is not None and not isinstance(value, str):
            as_written[path] = n.value
        return value

    try:
        return convert(node, (), 1), lines, problems
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlProblem(mark.line + 1 if mark is not None else None, (),
                          f"YAML error: {getattr(exc, 'problem', None) or exc}") from exc
