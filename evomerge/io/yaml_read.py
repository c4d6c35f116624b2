"""Reading a user's YAML: ``yaml.safe_load``, stricter on one thing and clearer on errors.

PyYAML keeps the last of a key given twice in one mapping, so a second ``evaluation:`` block
at the end of an experiment silently replaces the first; here it is refused, naming both lines.
Its errors span several lines (context, the source line, a caret); here they read as one:
the line and column, what is wrong, and the construct it was in.
"""

from __future__ import annotations

from typing import Any

import yaml

from evomerge.errors import UserInputError


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # before the base class flattens merge keys (<<): overriding a merged key is allowed
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                again = key in first
            except TypeError:  # an unhashable key: the base class says so
                continue
            if again:
                raise DuplicateKeyError(
                    f"line {line}: key {key!r} is given twice (first on line {first[key]}); "
                    "keep one"
                )
            first[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(text: str, origin: str) -> Any:
    """``text`` parsed as YAML (safe types only); a syntax error or a repeated key raises a
    one-line UserInputError naming ``origin`` (the file) and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise UserInputError(f"{origin}: not valid YAML ({one_line(err)})") from None


def one_line(err: yaml.YAMLError) -> str:
    """PyYAML's error as ``line 3, column 6: <problem> (<context> on line 2)``."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    mark = err.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    if err.context:
        where = err.context_mark
        same = where is None or where.line == mark.line
        text += f" ({err.context}{'' if same else f' on line {where.line + 1}'})"
    return text
