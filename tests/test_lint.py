"""The linter, as part of the tests (so CI runs it): ruff with the repository's ruff.toml."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff(*args):
  ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
  assert ruff, "ruff is missing: it is installed with the test extras (bash scripts/setup.sh)"
  return subprocess.run(
    [ruff, *args, "--no-cache", str(ROOT)], cwd=ROOT, capture_output=True, text=True, check=False
  )


def test_the_code_passes_the_linter():
  result = _ruff("check", "--output-format", "concise")
  assert result.returncode == 0, result.stdout + result.stderr


def test_the_code_is_formatted():
  result = _ruff("format", "--check")
  assert result.returncode == 0, (
    result.stdout + result.stderr + "\nFormat it with: .venv/bin/ruff format ."
  )


def test_the_library_imports_neither_the_components_nor_the_application():
  """dp_tfx/ is the library; components/ and pipelines/ build on it, never the other way."""
  offending = [
    f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
    for path in sorted((ROOT / "dp_tfx").rglob("*.py"))
    for number, line in enumerate(path.read_text().splitlines(), 1)
    if line.lstrip().startswith(("import ", "from "))
    and ("dp_tfx.pipelines" in line or "dp_tfx.components" in line)
  ]
  assert not offending, "\n".join(offending)
