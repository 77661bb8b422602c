"""The README and docs/ say what the code does: their Python runs, their commands parse, their
links lead somewhere.

A ```python block runs, in order with the page's other blocks (one namespace per page, in a fresh
working directory), unless the line before it is `<!-- not run: why -->`: then it only has to
compile. `<!-- slow: why -->` runs it with the slow tests. A block that defines `test_*` functions
has them called (with `tmp_path`). Every `dp-tfx` line of a ```bash block parses with the CLI's
own parser, every `python -m MODULE` names a module that exists, and every relative link points
to a file (and to a heading of it, for a `#anchor`).
"""

import dataclasses
import importlib.util
import inspect
import pathlib
import re
import shlex
from typing import List, Optional

import pytest

from dp_tfx.pipelines import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!--\s*(not run|slow)\s*:\s*(.*?)\s*-->$")
DP_TFX = re.compile(r"^(?:\.venv/bin/)?dp-tfx(?:\s|$)")
PYTHON_M = re.compile(r"(?:\.venv/bin/)?python3?\s+-m\s+([A-Za-z_][\w.]*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Block:
  page: pathlib.Path
  line: int  # of the block's first line of code
  lang: str
  code: str
  mark: Optional[str]  # "not run", "slow" or None
  reason: str

  @property
  def name(self) -> str:
    return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: pathlib.Path) -> List[Block]:
  lines = page.read_text().split("\n")
  blocks, index = [], 0
  while index < len(lines):
    if lines[index].startswith("```"):
      lang = lines[index][3:].strip()
      end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
      assert end is not None, f"{page.relative_to(ROOT)}:{index + 1}: a code block never closes"
      marked = MARK.match(lines[index - 1].strip()) if index else None
      blocks.append(
        Block(
          page=page,
          line=index + 2,
          lang=lang,
          code="\n".join(lines[index + 1 : end]) + "\n",
          mark=marked.group(1) if marked else None,
          reason=marked.group(2) if marked else "",
        )
      )
      index = end
    index += 1
  return blocks


def _prose(page: pathlib.Path) -> str:
  """The page without its code blocks (links inside them are code, not links)."""
  return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


BLOCKS = [block for page in PAGES for block in _blocks(page)]
PYTHON = [block for block in BLOCKS if block.lang == "python"]
BASH_LINES = [
  (block, block.line + number, line.strip())
  for block in BLOCKS
  if block.lang == "bash"
  for number, line in enumerate(block.code.replace("\\\n", " ").split("\n"))
  if line.strip()
]


def _pages_to_run():
  for page in PAGES:
    runnable = [b for b in PYTHON if b.page == page and b.mark != "not run"]
    if runnable:
      slow = any(block.mark == "slow" for block in runnable)
      yield pytest.param(runnable, id=page.name, marks=[pytest.mark.slow] if slow else [])


def test_the_pages_have_the_blocks_these_tests_check():
  assert (ROOT / "docs").is_dir() and len(PAGES) > 5
  assert PYTHON and any(DP_TFX.match(line) for _, _, line in BASH_LINES)


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name)
def test_every_python_block_compiles(block):
  compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")


def test_every_mark_names_its_reason_and_stands_before_a_python_block():
  for page in PAGES:
    lines = page.read_text().split("\n")
    for number, line in enumerate(lines, 1):
      marked = MARK.match(line.strip())
      if line.strip().startswith("<!--") and ("not run" in line or "slow" in line):
        where = f"{page.relative_to(ROOT)}:{number}"
        assert marked and marked.group(2), (
          f"{where}: write <!-- not run: why --> or <!-- slow: why -->"
        )
        following = lines[number] if number < len(lines) else ""
        assert following.startswith("```python"), f"{where}: the mark must precede a python block"


@pytest.mark.parametrize("blocks", list(_pages_to_run()))
def test_a_pages_python_runs_in_order(blocks, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "docs_example"}
  for block in blocks:
    before = set(namespace)
    exec(compile("\n" * (block.line - 1) + block.code, str(block.page), "exec"), namespace)
    for name in sorted(set(namespace) - before):
      if name.startswith("test_") and callable(namespace[name]):
        _call_with_fixtures(namespace[name], tmp_path / name)


def _call_with_fixtures(function, tmp_path: pathlib.Path):
  parameters = inspect.signature(function).parameters
  unknown = set(parameters) - {"tmp_path"}
  assert not unknown, f"{function.__name__} asks for fixtures the docs test lacks: {unknown}"
  tmp_path.mkdir()
  function(**({"tmp_path": tmp_path} if "tmp_path" in parameters else {}))


@pytest.mark.parametrize(
  "block, line, command",
  [entry for entry in BASH_LINES if DP_TFX.match(entry[2])],
  ids=lambda value: value.name if isinstance(value, Block) else None,
)
def test_every_dp_tfx_command_line_parses(block, line, command):
  argv = shlex.split(command, comments=True)[1:]
  try:
    cli.build_parser().parse_args(argv)
  except SystemExit as stopped:
    pytest.fail(f"{block.page.relative_to(ROOT)}:{line}: `{command}` does not parse ({stopped})")


def test_every_python_m_names_a_module_that_exists():
  modules = {
    (page.relative_to(ROOT), module)
    for page in PAGES
    for module in PYTHON_M.findall(page.read_text())
  }
  assert modules
  missing = [
    f"{page}: python -m {module}"
    for page, module in sorted(modules)
    if importlib.util.find_spec(module) is None
  ]
  assert not missing, "\n".join(missing)


def _anchors(page: pathlib.Path) -> set:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats
  numbered."""
  anchors, seen = set(), {}
  for line in _prose(page).split("\n"):
    heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if heading:
      slug = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower()).replace(" ", "-")
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      anchors.add(slug if count == 0 else f"{slug}-{count}")
  return anchors


def test_every_relative_link_leads_to_a_file_and_heading():
  broken = []
  for page in PAGES:
    for target in LINK.findall(_prose(page)):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
        continue
      path, _, anchor = target.partition("#")
      linked = (page.parent / path).resolve() if path else page
      if not linked.exists():
        broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
      elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
        broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
  assert not broken, "\n".join(broken)


def test_the_readme_and_the_index_link_to_every_docs_page():
  for index in (ROOT / "README.md", ROOT / "docs" / "README.md"):
    linked = {
      (index.parent / target.partition("#")[0]).resolve() for target in LINK.findall(_prose(index))
    }
    unlinked = [
      page.name for page in PAGES[1:] if page.name != "README.md" and page.resolve() not in linked
    ]
    assert not unlinked, f"{index.relative_to(ROOT)} does not link to {unlinked}"


def test_the_readmes_first_screen_is_what_and_how_not_platform_details():
  first_screen = "\n".join((ROOT / "README.md").read_text().split("\n")[:30]).lower()
  for detail in ("glibc", "onednn", "eigen", "trixie", "tf_enable_onednn_opts"):
    assert detail not in first_screen, f"the README's first screen mentions {detail}"
