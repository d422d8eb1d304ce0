"""Reading YAML that a user wrote (suites, model configs): UTF-8 only, no code, no alias bombs.

Apart from `suite` so that every reader of user YAML (`suite`, `registry.read_config`) uses it without
importing the suite schema.
"""

from __future__ import annotations

from typing import Any

import yaml

from .core import TokbenchError

# A YAML file is expanded by its aliases (`*name` repeats what `&name` marks): a few hundred bytes of nested
# aliases expand to gigabytes. Suites are small: refuse more nodes, or more characters, than any suite needs.
MAX_YAML_NODES = 100_000
MAX_YAML_CHARS = 10_000_000


def load_yaml(data: bytes | str, what: str) -> Any:
    """YAML text (bytes must be UTF-8) as Python data, safely: no code, and no expansion past
    `MAX_YAML_NODES` nodes or `MAX_YAML_CHARS` characters of scalars, counted with every alias expanded
    (a recursive alias is refused). Any problem is a `TokbenchError` naming `what`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise TokbenchError(f"{what} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}); save it as "
                                "UTF-8") from None
    loader = None
    try:
        loader = yaml.SafeLoader(data)  # reads the text at once: a control character fails here
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, chars = _expanded_size(node)
        if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
            raise TokbenchError(f"{what} expands to {nodes:,} YAML nodes and {chars:,} characters through its "
                                f"aliases (*name); a suite holds at most {MAX_YAML_NODES:,} and {MAX_YAML_CHARS:,}: "
                                "write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise TokbenchError(f"could not parse {what}: {str(e)[:1000]}") from None
    except RecursionError:
        raise TokbenchError(f"{what} is nested too deeply (or refers to itself through an alias)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(nodes, scalar characters) of a composed YAML document with every alias expanded, computed once
    per distinct node; a node that contains itself raises RecursionError."""
    sizes: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise RecursionError("a recursive alias")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        for child in children:
            n, c = size(child)
            nodes, chars = nodes + n, chars + c
        open_nodes.discard(key)
        sizes[key] = (nodes, chars)
        return nodes, chars

    return size(root)
