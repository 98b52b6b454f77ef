"""The documentation builds with warnings as errors, and documents every public name.

The build runs ``sphinx-build -W`` on ``docs/`` into a temporary directory, once
per test session, offline (PyTorch links come from ``docs/_intersphinx``). The
API check reads the built site's inventory (``objects.inv``), so a name counts as
documented only when Sphinx rendered an entry for it on the API page.
"""

from __future__ import annotations

import inspect
import os
import pkgutil
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from sphinx.pycode import ModuleAnalyzer

import torch_constraints
import torch_constraints.functional

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGE = "api"
PUBLIC_MODULES = [torch_constraints, torch_constraints.functional]


def public_names() -> list[tuple[ModuleType, str]]:
    return [(module, name) for module in PUBLIC_MODULES for name in module.__all__]


def build(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``sphinx-build -W`` with the project's configuration, as CI does."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("TORCH_CONSTRAINTS_DOCS_ONLINE", None)  # the CI build is offline
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    return subprocess.run(
        [*command, "-c", str(DOCS), *extra, str(source), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    result = build(DOCS, out)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def inventory(site: Path) -> dict[str, set[str]]:
    """``{qualified name: pages}`` of every object in the built site's ``objects.inv``."""
    with open(site / "objects.inv", "rb") as stream:
        header = [stream.readline() for _ in range(4)]
        assert header[0].startswith(b"# Sphinx inventory version 2"), header[0]
        lines = zlib.decompress(stream.read()).decode("utf-8").splitlines()
    pages: dict[str, set[str]] = {}
    for line in lines:
        # name domain:role priority uri display-name (the name has no spaces in the py domain)
        name, role, _, uri = line.split(" ", 4)[:4]
        if role.startswith("py:"):
            pages.setdefault(name, set()).add(uri.split("#")[0])
    return pages


def test_docs_build_without_warnings(site: Path) -> None:
    for page in ("index", "quickstart", "concepts", "migrating-from-weightclipper", "api"):
        assert (site / f"{page}.html").is_file(), page


def test_links_to_pytorch_resolve_offline(site: Path) -> None:
    quickstart = (site / "quickstart.html").read_text(encoding="utf-8")
    assert "generated/torch.nn.utils.parametrize.remove_parametrizations.html" in quickstart


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    # The build above is only worth something if a warning, such as a reference
    # to a name the package does not have, fails it.
    source = tmp_path / "source"
    source.mkdir()
    (source / "index.md").write_text("# Title\n\nSee {func}`torch_constraints.not_a_function`.\n")
    result = build(source, tmp_path / "html")
    assert result.returncode != 0
    assert "torch_constraints.not_a_function" in result.stderr


@pytest.mark.parametrize(
    ("module", "name"), public_names(), ids=[f"{m.__name__}.{n}" for m, n in public_names()]
)
def test_public_name_is_on_the_api_page(
    inventory: dict[str, set[str]], module: ModuleType, name: str
) -> None:
    qualified = f"{module.__name__}.{name}"
    pages = inventory.get(qualified, set())
    assert pages, f"{qualified} is not documented: add an auto* directive for it to docs/api.rst"
    assert f"{API_PAGE}.html" in pages, f"{qualified} is documented on {pages}, not on the API page"


@pytest.mark.parametrize(
    ("module", "name"), public_names(), ids=[f"{m.__name__}.{n}" for m, n in public_names()]
)
def test_public_name_has_a_docstring(module: ModuleType, name: str) -> None:
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc and doc.strip(), f"{module.__name__}.{name} has no docstring of its own"
    elif name != "__version__":  # documented by hand on the API page
        # Data (type aliases, constants): a ``#:`` comment above the assignment, in
        # the module that defines it (a re-exported constant is defined elsewhere).
        modules = [module.__name__] + [
            f"{torch_constraints.__name__}.{info.name}"
            for info in pkgutil.iter_modules(torch_constraints.__path__)
        ]
        documented = any(
            ("", name) in ModuleAnalyzer.for_module(m).find_attr_docs() for m in modules
        )
        assert documented, f"{module.__name__}.{name} needs a '#:' doc comment"
