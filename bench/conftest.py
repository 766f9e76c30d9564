"""pytest configuration for bench/ (not collected by the normal test run:
pyproject's ``testpaths`` is ``tests``).

    pytest bench/test_reference.py                 # the reference's interop tests (fast)
    pytest bench/ --benchmark-only                  # the pytest-benchmark suites
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # an installed kmsenv wins; else the source tree
    import kmsenv  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "src"))
for _p in (os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a pytest-benchmark suite of kmsenv's building blocks (bench/)")
