"""The house in layers: imports point down only (lazy imports included), no
import cycle, no module much over 400 lines."""

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "gradflow_jax")
LAYERS = ["_backend", "_io", "_data", "capture", "models", "measure", "theory", "diagnosis",
          "watch", "studies", "render", "cli", "api"]
RANK = {"_backend": 0, "_io": 0, "_data": 0, "_display": 0, "capture": 1, "models": 2,
        "measure": 3, "theory": 4, "diagnosis": 5, "watch": 6, "studies": 7, "render": 8,
        "cli": 9, "__init__": 10, "types": 10, "plots": 10}


def _modules():
  out = {}
  for folder, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel] = path
  return out


def _imports(path, name):
  """Modules of the package that ``path`` imports, anywhere in it."""
  tree = ast.parse(open(path).read())
  package = name.rsplit(".", 1)[0] if "." in name else ""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      if node.level:
        base = package
        mod = f"{base}.{node.module}" if node.module else base
      elif node.module and node.module.startswith("gradflow_jax"):
        mod = node.module[len("gradflow_jax"):].lstrip(".")
      else:
        continue
      for alias in node.names:
        found.add(f"{mod}.{alias.name}".lstrip("."))
        found.add(mod)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("gradflow_jax."):
          found.add(alias.name[len("gradflow_jax."):])
  return found


def _graph():
  mods = _modules()
  graph = {}
  for name, path in mods.items():
    targets = set()
    for t in _imports(path, name):
      while t and t not in mods and f"{t}.__init__" not in mods:
        t = t.rsplit(".", 1)[0] if "." in t else ""
      if t in mods:
        targets.add(t)
      elif f"{t}.__init__" in mods:
        targets.add(f"{t}.__init__")
    graph[name] = targets - {name}
  return graph


def _rank(module: str) -> int:
  return RANK[module.split(".")[0]]


def test_imports_point_down_only():
  bad = [(m, t) for m, ts in _graph().items() for t in ts if _rank(t) > _rank(m)]
  assert not bad, bad


def test_no_import_cycle():
  graph = _graph()
  seen, stack, cycles = set(), [], []

  def visit(m):
    if m in stack:
      cycles.append(stack[stack.index(m):] + [m])
      return
    if m in seen:
      return
    seen.add(m)
    stack.append(m)
    for t in sorted(graph[m]):
      if not t.endswith("__init__"):  # a package's namespace re-exports its modules
        visit(t)
    stack.pop()
  for m in sorted(graph):
    visit(m)
  assert not cycles, cycles


def test_no_module_much_over_400_lines():
  long = {m: n for m, p in _modules().items() if (n := len(open(p).read().splitlines())) > 420}
  assert not long, long


def test_benchmarks_and_examples_import_only_what_exists():
  """Every ``from gradflow_jax... import name`` and ``gf.name`` /
  ``gf.namespace.name`` in benchmarks/ and examples/ names something the
  package has (a moved module or name broke the benchmarks once, unseen)."""
  import importlib
  import re
  import gradflow_jax as gf
  top = os.path.join(ROOT, "..")
  missing = []
  for folder in ("benchmarks", "examples"):
    for f in sorted(os.listdir(os.path.join(top, folder))):
      if not f.endswith(".py"):
        continue
      text = open(os.path.join(top, folder, f)).read()
      for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradflow_jax"):
          module = importlib.import_module(node.module)
          for alias in node.names:
            if not hasattr(module, alias.name):
              try:
                importlib.import_module(f"{node.module}.{alias.name}")
              except ImportError:
                missing.append(f"{folder}/{f}: from {node.module} import {alias.name}")
      for chain in re.findall(r"\bgf((?:\.[A-Za-z_]\w*)+)", text):
        obj = gf
        for part in chain.strip(".").split("."):
          if isinstance(obj, type(gf)) and hasattr(obj, part):
            obj = getattr(obj, part)
          elif isinstance(obj, type(gf)):
            missing.append(f"{folder}/{f}: gf{chain}")
            break
          else:
            break  # an attribute of a function or class: not ours to check here
  assert not missing, missing
