"""The package layout keeps its imports one way (docs/architecture.md):

    util  <-  core (top-level modules)  <-  atoms/  <-  labels/  <-  apply/  <-  cli

A module may import its own layer or a lower one, never a higher one (at module level or inside a
function), module-level imports form no cycle, and labels/ never imports TensorFlow or Keras.
"""
import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "ednn_tf"
LAYER = {"util": 0, "atoms": 2, "labels": 3, "apply": 4, "cli": 5}


def _module_name(path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module):
    parts = module.split(".")
    if len(parts) == 1:          # the package itself (lazy __init__)
        return None
    return LAYER.get(parts[1], 1)


def _imports(path):
    """(target module, at module level?) of every ednn_tf import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("ednn_tf"):
                continue
            targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            out += [(t, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("ednn_tf")]
    return out


def _resolve(target):
    """The module file a dotted import target names (``ednn_tf.atoms.render`` or a name in it)."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        p = PKG.parent.joinpath(*parts[:k])
        if p.with_suffix(".py").is_file() or (p / "__init__.py").is_file():
            return ".".join(parts[:k])
    return target


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_no_import_goes_up_a_layer(path):
    src = _layer(_module_name(path))
    if src is None:
        return
    for target, _ in _imports(path):
        dst = _layer(_resolve(target))
        assert dst is None or dst <= src, f"{_module_name(path)} (layer {src}) imports {target} (layer {dst})"


def test_module_level_imports_have_no_cycle():
    graph = {_module_name(p): {_resolve(t) for t, top in _imports(p) if top} for p in MODULES}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph.get(m, ()):
            if n == m or n not in graph:
                continue
            assert state.get(n) != "open", f"import cycle: {' -> '.join(stack + [m, n])}"
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_labels_never_import_tensorflow_or_keras():
    for path in sorted((PKG / "labels").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] not in ("tensorflow", "keras"), f"{path.name} imports {n}"
