"""The tools that hold the line (issue 14 §7): the import contracts of
pyproject.toml [tool.importlinter] and the lint step of .ci/run.

Each contract is shown to catch a planted import in a copy of the package, so
that "KEPT" in CI means something; every module has a floor, so that a new one
cannot slip past the layers; and .ci/run installs what the lint extra pins.
Runs from a checkout only (the wheel's test run has no src/ or .ci/).
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "kmsenv"
PYPROJECT = ROOT / "pyproject.toml"
CI = ROOT / ".ci" / "run"

pytestmark = [
    pytest.mark.skipif(not (PACKAGE / "__init__.py").is_file() or not CI.is_file(), reason="needs a source checkout"),
    # Reaches no crypto backend: the pure-backend CI pass leaves it out.
    pytest.mark.backend_independent,
]

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks are the same on 3.10


def _config() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _contracts() -> dict[str, dict]:
    return {c["name"]: c for c in _config()["tool"]["importlinter"]["contracts"]}


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower(): r for r in reqs}


def test_ci_installs_the_lint_extra_as_pinned():
    lint = _config()["project"]["optional-dependencies"]["lint"]
    script = CI.read_text(encoding="utf-8")
    step = script[script.index('step "lint: ') :]
    step = step[: step.index("\nstep ")]
    installs = [line for line in step.splitlines() if line.startswith("python -m pip install")]
    assert len(installs) == 1, installs
    pinned = re.findall(r'"([^"]+)"', installs[0])
    assert _requirement_names(pinned) == _requirement_names(lint)
    for command in ("ruff check src tests bench fuzz scripts", "ruff format --check", "\nmypy ", "lint-imports"):
        assert command in step, command


def test_every_module_has_a_floor():
    """A module added to kmsenv must be placed on a floor of the layers
    contract (or be kmsenv.localkms, which stands apart)."""
    floors = _contracts()["floors: a module imports only from its floor or below"]
    placed = {name.strip() for layer in floors["layers"] for name in re.split(r"[:|]", layer)}
    present = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    present |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert placed - present == set(), "a floor names a module that is gone"
    assert present - placed == {"localkms"}


# (file in the package copy, import planted at its end, the contract it breaks)
_PLANTED = [
    ("arn.py", "from . import kms", "floors: a module imports only from its floor or below"),
    ("message/der.py", "from .. import crypto", "model and message never import crypto"),
    ("engine.py", "from .crypto import native", "only crypto/ imports crypto/native.py"),
    ("dask.py", "from . import spark", "engine adapters never import each other"),
    ("localkms/blob.py", "from .. import model", "localkms imports nothing from the SDK side"),
    ("cache.py", "from . import localkms", "the SDK library never imports localkms"),
    ("instance/proto.py", "from . import client", "instance: the protocol never imports the client"),
]


def _lint_imports(src: pathlib.Path, cwd: pathlib.Path) -> tuple[int, dict[str, str]]:
    """Run lint-imports with this pyproject's contracts on the package under
    ``src``; (exit code, {contract name: KEPT or BROKEN})."""
    shutil.copy(PYPROJECT, cwd / "pyproject.toml")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
            "--config",
            str(cwd / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=str(cwd),
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    found = dict(re.findall(r"^(.+?) ?(KEPT|BROKEN)\b", out.stdout, re.M))
    return out.returncode, {name.strip(): status for name, status in found.items()}


@pytest.mark.skipif(importlib.util.find_spec("importlinter") is None, reason="import-linter (the lint extra)")
def test_each_contract_holds_and_catches_a_planted_import(tmp_path):
    copy = tmp_path / "src" / "kmsenv"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    names = set(_contracts())
    assert {contract for _, _, contract in _PLANTED} == names, "every contract gets a planted import"

    code, status = _lint_imports(tmp_path / "src", tmp_path)
    assert status == {name: "KEPT" for name in names}
    assert code == 0

    for path, statement, _ in _PLANTED:
        with (copy / path).open("a", encoding="utf-8") as f:
            f.write(f"\n\ndef _planted() -> None:\n    {statement}  # noqa: F401\n")
    code, status = _lint_imports(tmp_path / "src", tmp_path)
    assert status == {name: "BROKEN" for name in names}
    assert code == 1
