"""Layers: the crypto backend is the only place that chooses native or pure,
and the bottom layers do not import the ones above them.

(a) Each low module is imported in a fresh interpreter *without* running
``kmsenv/__init__`` (which imports everything), so what gets loaded is what
that module itself pulls in. (b) The package's source is scanned: outside
``kmsenv/crypto/`` nothing imports the C core, ``crypto.native`` or a private
name or module of ``crypto``.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

import kmsenv

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

PACKAGE = pathlib.Path(kmsenv.__file__).parent
SRC = PACKAGE.parent

# Imports ``target`` under a stand-in ``kmsenv`` package (its __init__ not
# run), optionally wipes a buffer through it, and prints the kmsenv modules loaded.
_PROBE = """
import importlib, importlib.util, json, sys, types
target, call_wipe = sys.argv[1], sys.argv[2] == "1"
spec = importlib.util.find_spec("kmsenv")
pkg = types.ModuleType("kmsenv")
pkg.__path__ = list(spec.submodule_search_locations)
pkg.__file__ = spec.origin
sys.modules["kmsenv"] = pkg
module = importlib.import_module(target)
if call_wipe:
    buf = bytearray(b"secret")
    module.wipe(buf)
    assert buf == bytes(6), buf
print(json.dumps(sorted(name for name in sys.modules if name.startswith("kmsenv."))))
"""


def _loaded(target: str, call_wipe: bool = False) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, target, "1" if call_wipe else "0"],
        capture_output=True,
        text=True,
        cwd=str(SRC.parent),
        env=dict(os.environ, PYTHONPATH=str(SRC)),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def _under(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_the_probe_sees_what_a_module_pulls_in():
    """Against a module known to load the message layer, so that an empty
    finding below means something."""
    loaded = _loaded("kmsenv.columns")
    assert {"kmsenv.message.codec", "kmsenv.crypto", "kmsenv.columns"} <= loaded
    assert "kmsenv.engine" not in loaded  # the stand-in package did not import everything


@pytest.mark.parametrize("call_wipe", [False, True], ids=["import", "import-and-wipe"])
def test_wipe_is_the_bottom_layer(call_wipe):
    """_wipe, used by model and the message codec, reaches neither the pure
    backend (which re-parses messages with the codec) nor the message layer,
    even once its first wipe has looked up the native cleanse."""
    loaded = _loaded("kmsenv._wipe", call_wipe)
    assert _under(loaded, "kmsenv.message", "kmsenv.model", "kmsenv.crypto.pure", "kmsenv.columns") == set()
    if not call_wipe:
        assert loaded == {"kmsenv._wipe"}  # the lookup is lazy


@pytest.mark.parametrize("target", ["kmsenv.model", "kmsenv.message.codec", "kmsenv.message.der"])
def test_model_and_message_import_no_crypto(target):
    loaded = _loaded(target)
    assert target in loaded
    assert _under(loaded, "kmsenv.crypto", "kmsenv._native", "kmsenv.columns", "kmsenv.engine") == set()


# ---------------------------------------------------------------- source scan

CRYPTO = PACKAGE / "crypto"

# (module, imported name) pairs outside crypto/ that may break the rule, with the reason.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


def _violations(path: pathlib.Path, root: pathlib.Path = SRC) -> list[tuple[str, str]]:
    """(imported thing, why) for every import in ``path`` that reaches below the backend interface."""
    module = _module_name(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            targets = [f"{source}.{alias.name}" for alias in node.names]
            if source == "importlib":
                continue
        for name in targets:
            if name == "kmsenv._native" or name.startswith("kmsenv._native."):
                found.append((name, "the C core"))
            elif name == "kmsenv.crypto.native" or name.startswith("kmsenv.crypto.native."):
                found.append((name, "the native backend"))
            elif name.startswith("kmsenv.crypto.") and _private(name[len("kmsenv.crypto.") :]):
                found.append((name, "a private name of crypto"))
        # importlib.import_module("kmsenv._native") and the like
        if isinstance(node, ast.Constant) and node.value in ("kmsenv._native", "kmsenv.crypto.native"):
            found.append((node.value, "imported by name"))
    return [(name, why) for name, why in found if (module, name) not in ALLOWED]


def test_the_scan_catches_what_it_should(tmp_path):
    bad = tmp_path / "kmsenv" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "from .crypto import native\n"
        "from .crypto.native import _CIPHERS, _raise, ffi\n"
        "from .crypto import _load_native\n"
        "import kmsenv._native\n"
        "from . import _native\n"
        "from .crypto.interface import STATUS_OK\n"  # public: fine
    )
    names = [name for name, _ in _violations(bad, tmp_path)]
    assert names == [
        "kmsenv.crypto.native",
        "kmsenv.crypto.native._CIPHERS",
        "kmsenv.crypto.native._raise",
        "kmsenv.crypto.native.ffi",
        "kmsenv.crypto._load_native",
        "kmsenv._native",
        "kmsenv._native",
    ]


def test_only_crypto_reaches_the_native_core_and_crypto_privates():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if CRYPTO not in p.parents]
    assert len(files) > 20 and PACKAGE / "columns.py" in files
    found = {str(p.relative_to(PACKAGE)): v for p in files if (v := _violations(p))}
    assert found == {}


def test_only_native_py_imports_the_c_core():
    """Inside crypto too: native.py is the one importer of kmsenv._native (README)."""
    importers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(name.startswith("kmsenv._native") for name, _ in _violations(p))
    )
    assert importers == ["crypto/native.py"]


def test_columns_keeps_the_column_model_only():
    """No native/pure twins and no C calls in columns.py: it asks get_backend()."""
    source = (PACKAGE / "columns.py").read_text(encoding="utf-8")
    for needle in ("lib.kmsenv_", "ffi.", "_native", "_pure(", "crypto.pure", "crypto.native", "backend.name"):
        assert needle not in source, needle


def test_the_compact_constants_have_one_home():
    """columns names the backends' compact constants; the key reference length
    the backends cut from the header digest is keyheader's."""
    from kmsenv import columns, keyheader
    from kmsenv.crypto import interface

    assert interface.COMPACT_REF_LEN == keyheader.REF_LEN
    assert (columns.COMPACT_FORMAT, columns.OVERHEAD, columns.MAX_SEGMENT) == (
        interface.COMPACT_FORMAT,
        interface.COMPACT_OVERHEAD,
        interface.COMPACT_MAX_SEGMENT,
    )


# ---------------------------------------------------------------- the envelope's steps (issue 14 §2, §4)

ENGINE_ALLOWED: dict[str, str] = {}  # module -> why it may import an engine private (none today)


def _engine_privates(path: pathlib.Path, root: pathlib.Path = SRC) -> list[str]:
    """Private names of kmsenv.engine that ``path`` imports or reads."""
    module = _module_name(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and _absolute(module, path, node) == "kmsenv.engine":
            found += [alias.name for alias in node.names if alias.name.startswith("_")]
        elif (  # engine._name after `from . import engine` / `import kmsenv.engine as engine`
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id == "engine"
        ):
            found.append(node.attr)
    return found


def test_the_engine_scan_catches_what_it_should(tmp_path):
    bad = tmp_path / "kmsenv" / "stream" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "from ..engine import _generate, decrypt\n"
        "from kmsenv.engine import _Key\n"
        "from .. import engine\n"
        "engine._iv_pair()\n"
        "from .._envelope import generate\n"  # the public home: fine
    )
    assert _engine_privates(bad, tmp_path) == ["_generate", "_Key", "_iv_pair"]


def test_no_module_but_engine_uses_an_engine_private():
    """The shared steps live in kmsenv._envelope under public names; the
    engine keeps only the order of a one-shot message's steps."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "engine.py" or _module_name(path, SRC) in ENGINE_ALLOWED:
            continue
        names = _engine_privates(path)
        if names:
            found[str(path.relative_to(PACKAGE))] = names
    assert found == {}


def test_the_envelope_imports_nothing_above_its_floor():
    """_envelope is on the engine's floor: it imports neither the engine nor
    anything above (streams, columns, providers, adapters)."""
    loaded = _loaded("kmsenv._envelope")
    assert "kmsenv._envelope" in loaded
    above = (
        "kmsenv.engine",
        "kmsenv.columns",
        "kmsenv.stream",
        "kmsenv.jobkey",
        "kmsenv.providers",
        "kmsenv.cache",
        "kmsenv.kms",
        "kmsenv.parquet",
        "kmsenv.arrow",
    )
    assert _under(loaded, *above) == set()


def test_the_pure_backend_does_not_parse_messages():
    """The engine parses a message once and hands the backend its layout: the
    pure backend imports no message codec (only the DER primitives and the
    outer-layout walker of message/der.py, which import nothing of kmsenv
    but the exceptions), and loading it loads neither codec nor model."""
    source = ast.parse((CRYPTO / "pure.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(source):
        if isinstance(node, ast.ImportFrom):
            imported.add(_absolute("kmsenv.crypto.pure", CRYPTO / "pure.py", node))
            imported |= {f"{_absolute('kmsenv.crypto.pure', CRYPTO / 'pure.py', node)}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert not {name for name in imported if name.startswith(("kmsenv.message.codec", "kmsenv.model"))}
    loaded = _loaded("kmsenv.crypto.pure")
    assert "kmsenv.crypto.pure" in loaded
    assert _under(loaded, "kmsenv.message.codec", "kmsenv.model", "kmsenv.engine") == set()
    assert _under(loaded, "kmsenv.message") <= {"kmsenv.message", "kmsenv.message.der"}


def test_der_imports_only_the_exceptions():
    """What the backends may use of the message layer stays at the bottom."""
    loaded = _loaded("kmsenv.message.der")
    assert loaded <= {"kmsenv.message", "kmsenv.message.der", "kmsenv.exceptions"}


def test_one_outer_layout_walker():
    """Only message/der.py walks the buffer layout of a message (the C core
    bounds-checks its own input; der_stream reads the same layout from a
    stream, TLV by TLV, with der.read_tl); engine.py builds no TLV by hand."""
    needles = (
        'enter(der.SEQUENCE, "message")',
        'enter(SEQUENCE, "message")',
        'enter(der.SEQUENCE, "body")',
        'enter(SEQUENCE, "body")',
    )
    walkers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "localkms" not in p.parts and any(n in p.read_text(encoding="utf-8") for n in needles)
    )
    assert walkers == ["message/der.py"]
    engine = (PACKAGE / "engine.py").read_text(encoding="utf-8")
    assert "\\x04\\x0c" not in engine and "\\x04\\x10" not in engine


def test_one_failover_loop():
    """The region-failover loop lives in providers.fail_over; parquet calls it."""
    parquet = (PACKAGE / "parquet.py").read_text(encoding="utf-8")
    assert "fail_over(" in parquet and '"retryable"' not in parquet
    providers = (PACKAGE / "providers.py").read_text(encoding="utf-8")
    assert providers.count('"retryable"') == 1  # inside fail_over only
