"""One declaration per operator (DESIGN §3): no module of the package outside `neutron_backend/ops/` keeps a list of
operator names; they read the declarations instead.

The scan reads the package's source (no import of the modules it scans) and flags, outside `ops/`:
- `aten.NAME` attribute references and "aten.NAME" / "aten::NAME" strings, for NAME an edge target or alias of a
  registered operator;
- bare NAME strings inside a tuple, list, set or dict literal that holds two or more such names (a list).

`passes/` is left out: each rewrite names the operators it rewrites from and into (its own one place; the names a
user may write for them are the declarations' aliases). So are the quantize/dequantize names (the quantization
vocabulary, not operators Neutron computes).
"""

from __future__ import annotations

import ast
from pathlib import Path

from neutron_backend import ops

PACKAGE = Path(ops.__file__).resolve().parent.parent
_NOT_OPERATORS = {"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel"}


def _declared_names() -> set[str]:
    names: set[str] = set()
    for operator in ops.operators():
        names.update(target._schema.name.split("::")[-1] for target in operator.targets)
        names.update(operator.aliases)
    return names - _NOT_OPERATORS


def _is_aten(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "aten") or (isinstance(node, ast.Attribute)
                                                                 and node.attr == "aten")


def operator_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every operator name `source` spells out, per the rules in the module docstring."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names and _is_aten(node.value):
            found.append((node.lineno, f"aten.{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for prefix in ("aten.", "aten::"):
                if node.value.startswith(prefix) and node.value.removeprefix(prefix).split(".")[0] in names:
                    found.append((node.lineno, node.value))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            elements = node.keys if isinstance(node, ast.Dict) else node.elts
            listed = [e.value for e in elements if isinstance(e, ast.Constant) and e.value in names]
            if len(listed) >= 2:
                found.append((node.lineno, ", ".join(listed)))
    return sorted(found)


def test_the_scan_finds_a_list_of_operators_and_an_aten_reference() -> None:
    names = _declared_names()
    source = ('if op_name(user) not in ("addmm", "mm"):\n    pass\n'
              "CLAMPS = (aten.clamp.default, torch.ops.aten.hardtanh.default)\n"
              'NAME = "aten::max_pool2d"\n'
              'KINDS = ("getitem", "view")\n')
    assert operator_names_in(source, names) == [(1, "addmm, mm"), (3, "aten.clamp"), (3, "aten.hardtanh"),
                                                (4, "aten::max_pool2d")]


def test_no_module_outside_ops_lists_operator_names() -> None:
    names = _declared_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("ops", "passes"):
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
                  for line, name in operator_names_in(path.read_text(), names)]
    assert not found, "operator names outside neutron_backend/ops (declare them on the operator):\n" + "\n".join(found)
