"""`.ci/run` stops at a type error or a lint error before any test runs.

Its lint and types steps (CI_STEPS=lint,types: no databases) run on a copy of the tree, with
the project's own Makefile and pyproject.toml, and with ruff and mypy from this environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(sys.executable).parent


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("pyproject.toml", "Makefile"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / ".ci", root / ".ci")
    shutil.copytree(REPO / "retentiond", root / "retentiond",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # `make lint` names these folders too; whether they are clean is the real run's business.
    for name in ("tests", "bench", "config"):
        (root / name).mkdir()
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for tool in ("ruff", "mypy"):
        (venv_bin / tool).symlink_to(TOOLS / tool)
    # Newer than the copied pyproject.toml, so make installs nothing into the copy.
    (root / ".venv" / ".installed").touch()
    # mypy's cache of the real tree (`make types` runs before the tests) saves a cold run of
    # 5-20 s; mypy rechecks whatever differs from it, and a cache that cannot be copied whole
    # only makes the run slower.
    if (REPO / ".mypy_cache").is_dir():
        try:
            shutil.copytree(REPO / ".mypy_cache", root / ".mypy_cache")
        except shutil.Error:
            shutil.rmtree(root / ".mypy_cache", ignore_errors=True)
    return root


def ci(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI_STEPS": "lint,types", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([str(root / ".ci" / "run")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


def test_a_type_error_fails_the_types_step_and_a_clean_tree_passes(tree: Path) -> None:
    probe = tree / "retentiond" / "ci_probe.py"
    probe.write_text('"""A deliberate type error."""\n\ncount: int = "many"\n')
    res = ci(tree)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.startswith("CI: make lint\n")
    assert ('retentiond/ci_probe.py:3: error: Incompatible types in assignment (expression has '
            'type "str", variable has type "int")  [assignment]\n') in res.stdout
    assert "Found 1 error in 1 file" in res.stdout
    assert re.search(r"^CI: types failed after 0m \d\ds; nothing after it ran$", res.stderr,
                     re.MULTILINE), res.stderr
    assert "CI: lint and types passed" not in res.stdout

    probe.unlink()
    res = ci(tree)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\nCI: lint and types passed in 0m \d\ds\n\Z", res.stdout), res.stdout


def test_a_lint_error_fails_before_the_types_step(tree: Path) -> None:
    probe = tree / "retentiond" / "ci_probe.py"
    probe.write_text('"""A deliberate lint error."""\n\nimport os\n')
    res = ci(tree)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "F401 [*] `os` imported but unused\n --> retentiond/ci_probe.py:3:8\n" in res.stdout
    assert re.search(r"^CI: lint failed after 0m \d\ds; nothing after it ran$", res.stderr,
                     re.MULTILINE), res.stderr
    assert "CI: make types" not in res.stdout
