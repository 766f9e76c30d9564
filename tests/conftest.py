from __future__ import annotations

import os

import pytest

import kmsenv
from kmsenv import crypto

BACKENDS = ["native", "pure"] if kmsenv.native_available() else ["pure"]
# KMSENV_TEST_BACKENDS=native narrows the per-backend tests (the sanitizer run
# has no use for the pure variants, which never enter the C core).
if os.environ.get("KMSENV_TEST_BACKENDS"):
    BACKENDS = [b for b in BACKENDS if b in os.environ["KMSENV_TEST_BACKENDS"].split(",")]


def pytest_report_header(config):
    info = kmsenv.backend_info()
    return [f"kmsenv {kmsenv.__version__}: backends under test {BACKENDS}; {info}"]


def pytest_sessionstart(session):
    # A suite that silently loses its native half would still pass: refuse that.
    if os.environ.get("KMSENV_REQUIRE_NATIVE") == "1" and not kmsenv.native_available():
        raise pytest.UsageError("KMSENV_REQUIRE_NATIVE=1 but " + str(crypto.native_unavailable_reason()))
    # The engine tests skip when their engine is not installed; CI names the
    # engines it installed so that a missing one fails instead of skipping.
    import importlib.util

    required = [m for m in os.environ.get("KMSENV_REQUIRE_ENGINES", "").split(",") if m.strip()]
    missing = [m for m in required if importlib.util.find_spec(m.strip()) is None]
    if missing:
        raise pytest.UsageError(f"KMSENV_REQUIRE_ENGINES names modules that are not installed: {missing}")


# pytest explains a failed `==` of two byte strings with difflib, whose time
# grows with the square of their length: a mismatch of two 200 KB messages
# kept a CI worker busy for over 20 minutes. Past this size the explanation is
# the lengths and the first differing offset, with a few bytes around it.
_BYTES_DIFF_MAX = 4096


def pytest_assertrepr_compare(op, left, right):
    bytes_like = (bytes, bytearray, memoryview)
    if op != "==" or not isinstance(left, bytes_like) or not isinstance(right, bytes_like):
        return None
    a, b = bytes(left), bytes(right)
    if max(len(a), len(b)) <= _BYTES_DIFF_MAX:
        return None
    at = min(len(a), len(b))
    for start in range(0, at, _BYTES_DIFF_MAX):  # whole blocks compare in C
        end = min(start + _BYTES_DIFF_MAX, at)
        if a[start:end] != b[start:end]:
            at = next(i for i in range(start, end) if a[i] != b[i])
            break
    lo = max(0, at - 8)
    return [
        f"{len(a)}-byte and {len(b)}-byte strings differ from offset {at}",
        f"left[{lo}:{at + 16}]:  {a[lo : at + 16].hex()}",
        f"right[{lo}:{at + 16}]: {b[lo : at + 16].hex()}",
    ]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run a test once per available crypto backend."""
    previous = crypto.get_backend().name
    crypto.set_backend(request.param)
    try:
        yield request.param
    finally:
        crypto.set_backend(previous)


def pytest_collection_modifyitems(config, items):
    # KMSENV_SKIP_BACKEND_TESTS=1 (.ci/run's pure-backend pass): the tests that
    # take the backend fixture already ran once per backend in the main run;
    # this pass is for every other test, whose process default is now pure.
    if os.environ.get("KMSENV_SKIP_BACKEND_TESTS") != "1":
        return
    covered = [item for item in items if "backend" in getattr(item, "fixturenames", ())]
    if covered:
        config.hook.pytest_deselected(items=covered)
        items[:] = [item for item in items if "backend" not in getattr(item, "fixturenames", ())]
