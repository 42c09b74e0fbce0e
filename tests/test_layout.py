"""model/ is laid out by concern and by dependency: imports run downward only, and the
serving path (app/, faceverify/, the face pipeline, the encoder's files and ONNX sessions)
imports no torch unless the torch runner is asked for."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# model's subpackages, bottom up: a module may import its own layer and the ones below.
LAYERS = {
    "model.formats": 0, "model.shipped": 0,
    "model.face": 1,
    "model.encoder": 2,
    "model.nn": 3,
    "model.convert": 4, "model.train": 4, "model.evaluate": 4,
}
# What serves without torch: every module here imports no torch at module level, nor anything
# that does.
TORCH_FREE = ["model.formats", "model.shipped", "model.face", "model.encoder",
              "model.evaluate.lfw", "model.evaluate.metrics", "model.evaluate.open_set",
              "app", "faceverify"]
TORCH_RUNNER = {"app.torch_runner"}  # the one app module that is the torch path


def modules(package: str) -> list[tuple[str, Path]]:
    root = ROOT / package.replace(".", "/")
    if root.with_suffix(".py").is_file():
        return [(package, root.with_suffix(".py"))]
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out.append((name, path))
    return out


def imported(path: Path, top_level_only: bool) -> set[str]:
    """The modules a file imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def layer_of(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def test_model_imports_run_downward_and_never_into_app():
    upward = []
    for name, path in modules("model"):
        mine = layer_of(name)
        for target in imported(path, top_level_only=False):
            if target.split(".")[0] in ("app", "faceverify"):
                upward.append(f"{name} imports {target}")
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    assert upward == []


def test_every_module_of_model_belongs_to_a_layer():
    assert [n for n, _ in modules("model") if n != "model" and layer_of(n) is None] == []


def test_the_serving_path_has_no_module_level_torch_import():
    offenders = []
    for package in TORCH_FREE:
        for name, path in modules(package):
            if name in TORCH_RUNNER:
                continue
            heavy = {m for m in imported(path, top_level_only=True)
                     if m.split(".")[0] in ("torch", "torchvision", "facenet_pytorch")
                     or m.startswith(("model.nn", "model.train", "model.convert",
                                      "model.evaluate.protocols", "app.torch_runner"))}
            if heavy:
                offenders.append(f"{name}: {sorted(heavy)}")
    assert offenders == []


BLOCK_TORCH = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'facenet_pytorch'):
            raise ImportError('torch is blocked: ' + name)
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print('ok')
"""


@pytest.mark.parametrize("package", TORCH_FREE)
def test_the_serving_path_imports_with_torch_blocked(package):
    names = [n for n, _ in modules(package) if n not in TORCH_RUNNER and
             not n.endswith("__main__")]
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *names], check=False,
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_every_package_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (the weights folder ships as model.weights)."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {n for package in ("app", "model", "faceverify")
             for n, path in modules(package) if path.name == "__init__.py"}
    assert found | {"model.weights"} == listed
