"""Read YAML into plain values while remembering the line of every key path.

The strict configuration loader needs two things PyYAML's ``safe_load`` hides: the
line each value came from (so an error can say ``forwarder.yaml:23``) and duplicate
keys (which ``safe_load`` silently collapses to the last one).
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple[str | int, ...]


class YamlProblem(Exception):
    """A syntax error or a duplicate key, with its 1-based line."""

    def __init__(self, line: int | None, path: Path, message: str):
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def load_with_lines(text: str) -> tuple[Any, dict[Path, int], list[YamlProblem]]:
    """Parse ``text``; return the value, ``{key path: line}``, and duplicate-key problems.

    A syntax error raises :class:`YamlProblem`. Duplicate keys are reported but do not
    stop parsing, so a single run lists every problem in the file.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlProblem(line, (), f"YAML syntax error: {problem}") from exc
    lines: dict[Path, int] = {}
    problems: list[YamlProblem] = []
    if node is None:
        return None, lines, problems
    constructor = yaml.constructor.SafeConstructor()

    def convert(n: yaml.Node, path: Path) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    problems.append(YamlProblem(key_node.start_mark.line + 1, path,
                                                f"unusable key {key!r}"))
                    continue
                key = str(key)
                child = (*path, key)
                if key in out:
                    problems.append(YamlProblem(key_node.start_mark.line + 1, child,
                                                "duplicate key (the YAML repeats it)"))
                lines[child] = key_node.start_mark.line + 1
                out[key] = convert(value_node, child)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(item, (*path, i)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return convert(node, ()), lines, problems
