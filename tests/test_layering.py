"""The package's import structure: no module inside it imports the package root, and decoding stays text-free."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "huginn_jax"


def _imports(path: pathlib.Path):
  """(module imported, names taken from it) of every import statement in a file, function bodies included."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from ((alias.name, ()) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      yield node.module, tuple(alias.name for alias in node.names)


def test_no_module_of_the_package_imports_the_package_root():
  submodules = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    for module, names in _imports(path):
      if module == "huginn_jax" and (not names or set(names) - submodules):
        offenders.append(f"{path.relative_to(PACKAGE)}: {module} {names}")
  assert not offenders, offenders


def test_decoding_does_not_import_text():
  for path in (PACKAGE / "decoding").glob("*.py"):
    assert not [m for m, _ in _imports(path) if m.startswith("huginn_jax.text")], path


def test_readme_module_map_names_every_module():
  readme = (PACKAGE.parent / "README.md").read_text()
  table = readme[readme.index("## Layout"):readme.index("## Changelog")]
  rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `huginn_jax")}
  missing = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent)
    if path.parent == PACKAGE:
      if path.name != "__init__.py" and not any(f"`{rel}`" in key for key in rows):
        missing.append(str(rel))
    elif path.name != "__init__.py":
      row = rows.get(f"`{rel.parent}/`", "")
      if f"`{path.name}`" not in row:
        missing.append(str(rel))
  assert not missing, f"README Layout lacks {missing}"
