"""Run the examples of the documentation: docstrings, the Markdown pages and the README.

* Docstrings: every module of the package, public or private, through :mod:`doctest`.
* Markdown pages (``docs/*.md`` and ``README.md``): fenced code blocks whose
  language is ``python``, ``py`` or ``pycon`` and whose text starts with ``>>>``.
  The blocks of one page run in order in one namespace, like a doctest file, in
  a temporary working directory. Other blocks (shell commands, code shown but
  not meant to run) are left alone.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

import torch_constraints

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
#: Pages whose point is code: each must hold at least one example that runs.
PAGES_WITH_EXAMPLES = {
    "README.md",
    "quickstart.md",
    "concepts.md",
    "migrating-from-weightclipper.md",
    "tutorial-wgan.md",
    "frameworks.md",
}
#: Pages that need optional frameworks: skipped where one of them is not installed.
PAGE_REQUIRES = {"frameworks.md": ("pytorch_lightning", "transformers", "accelerate")}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PYTHON = {"python", "py", "pycon", "python3"}


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block of a Markdown page."""

    language: str
    text: str
    line: int  # 1-based line number of the block's first line of code

    @property
    def is_example(self) -> bool:
        return self.language in PYTHON and self.text.lstrip().startswith(">>>")


def code_blocks(markdown: str) -> list[CodeBlock]:
    """Return the fenced code blocks of a Markdown text, in order."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type == "fence" and token.map is not None:
            language = token.info.split()[0] if token.info.strip() else ""
            blocks.append(CodeBlock(language, token.content, token.map[0] + 2))
    return blocks


def run_page(path: Path) -> doctest.TestResults:
    """Run a page's examples in one namespace; doctest prints failures with page line numbers."""
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    parser = doctest.DocTestParser()
    globs: dict[str, object] = {"__name__": "__main__"}
    for block in code_blocks(path.read_text(encoding="utf-8")):
        if block.is_example:
            name = f"{path.name}:{block.line}"
            test = parser.get_doctest(block.text, globs, name, str(path), block.line - 1)
            runner.run(test, clear_globs=False)
            globs = test.globs  # DocTest works on a copy: carry the names to the next block
    return runner.summarize(verbose=False)


def package_modules() -> list[str]:
    prefix = f"{torch_constraints.__name__}."
    infos = pkgutil.walk_packages(torch_constraints.__path__, prefix)
    return [torch_constraints.__name__, *sorted(info.name for info in infos)]


@pytest.mark.parametrize("name", package_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=OPTIONS, report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see stdout)"


def test_docstring_examples_exist() -> None:
    attempted = {
        name: doctest.testmod(importlib.import_module(name), optionflags=OPTIONS).attempted
        for name in ("torch_constraints.registration", "torch_constraints.functional")
    }
    assert all(count > 0 for count in attempted.values()), attempted


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_examples(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for framework in PAGE_REQUIRES.get(page.name, ()):
        pytest.importorskip(framework)
    monkeypatch.chdir(tmp_path)  # pages may write files (the tutorial's figure)
    result = run_page(page)
    assert result.failed == 0, f"{result.failed} example(s) of {page.name} failed (see stdout)"
    if page.name in PAGES_WITH_EXAMPLES:
        assert result.attempted > 0, f"{page.name} has no example in doctest form"


def test_pages_with_examples_exist() -> None:
    assert PAGES_WITH_EXAMPLES <= {page.name for page in PAGES}


# ---------------------------------------------------------------------- the extractor itself
SAMPLE = """\
# Title

```python
>>> 1 + 1
2
```

```bash
python -m torch_constraints.demo
```

~~~pycon
>>> x = 3
~~~

````python
print("shown, not run")
```python
>>> nested
```
````
"""


def test_code_blocks_finds_fences_languages_and_lines() -> None:
    blocks = code_blocks(SAMPLE)
    assert [(b.language, b.line, b.is_example) for b in blocks] == [
        ("python", 4, True),
        ("bash", 9, False),
        ("pycon", 13, True),
        ("python", 17, False),
    ]


def test_run_page_reports_failures_and_shares_names_between_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\n>>> x = 2\n```\n\ntext\n\n```python\n>>> x * 3\n6\n>>> x + 1\n4\n```\n"
    )
    assert run_page(page) == doctest.TestResults(failed=1, attempted=3)
