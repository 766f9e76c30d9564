"""cffi builder for ``kmsenv._native`` (API mode, out of line).

The cdef is read from ``kmsenv_core.h`` so the header and the binding cannot
drift. Link mode comes from the environment:

* default: the system libcrypto (``libraries=["crypto"]``, e.g. Debian ``libssl-dev``);
* ``KMSENV_OPENSSL_DIR=/prefix``: a static ``libcrypto.a`` from that prefix, with
  its symbols hidden so it cannot clash with another libcrypto in the process;
* ``KMSENV_SANITIZE=1``: build with AddressSanitizer + UndefinedBehaviorSanitizer;
* ``KMSENV_WARNINGS_AS_ERRORS=1``: ``-Werror``.

The C files compile in parallel, one per core (``KMSENV_BUILD_JOBS=N`` to choose;
``1`` for distutils' own one-at-a-time loop).
"""

from __future__ import annotations

import glob
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HEADER = os.path.join(HERE, "kmsenv_core.h")
SOURCES = sorted(glob.glob(os.path.join(HERE, "*.c")))


def _cdef_text() -> str:
    with open(HEADER, encoding="utf-8") as fh:
        text = fh.read()
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if not match:
        raise RuntimeError("kmsenv_core.h lacks the CDEF-BEGIN/CDEF-END markers")
    return match.group(1)


def _package_version() -> str:
    scope: dict[str, str] = {}
    with open(os.path.join(ROOT, "src", "kmsenv", "_version.py"), encoding="utf-8") as fh:
        exec(fh.read(), scope)
    return scope["__version__"]


def _build_options() -> dict[str, list[str]]:
    compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    link_args: list[str] = []
    options: dict[str, list[str]] = {"include_dirs": [HERE], "libraries": []}
    if sys.platform == "win32":
        compile_args = ["/O2"]
    if os.environ.get("KMSENV_WARNINGS_AS_ERRORS") == "1" and sys.platform != "win32":
        compile_args.append("-Werror")
    if os.environ.get("KMSENV_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
        compile_args = [a for a in compile_args if not a.startswith("-O")] + san
        link_args += ["-fsanitize=address,undefined"]
    prefix = os.environ.get("KMSENV_OPENSSL_DIR")
    if prefix:
        options["include_dirs"].append(os.path.join(prefix, "include"))
        if sys.platform == "win32":
            # OpenSSL's own ex_libs for VC-WIN64A (Configurations/10-main.conf).
            options["libraries"] += ["libcrypto", "crypt32", "ws2_32", "gdi32", "advapi32", "user32"]
            options["library_dirs"] = [os.path.join(prefix, "lib")]
        else:
            archives = glob.glob(os.path.join(prefix, "lib*", "libcrypto.a"))
            if not archives:
                raise RuntimeError(f"no libcrypto.a under {prefix}")
            options["extra_objects"] = [archives[0]]
            compile_args.append("-fvisibility=hidden")
            if sys.platform == "darwin":
                # ld64 has no --exclude-libs: export the module's init function only.
                link_args.append("-Wl,-exported_symbol,_PyInit__native")
            else:
                link_args.append("-Wl,--exclude-libs,ALL")
                options["libraries"] += ["pthread", "dl"]
    else:
        options["libraries"].append("libcrypto" if sys.platform == "win32" else "crypto")
        if sys.platform != "win32":
            options["libraries"].append("pthread")
    options["extra_compile_args"] = compile_args + [f'-DKMSENV_VERSION="{_package_version()}"']
    options["extra_link_args"] = link_args
    return options


def _compile_in_parallel() -> None:
    """Have distutils compile an extension's C files concurrently.

    distutils compiles them one after another; the SIMD kernels at -O3 (and the
    sanitizer builds) made that most of an install's build time. The private
    steps used here (``_setup_compile``, ``_get_cc_args``, ``_compile``) are
    those of every distutils since Python 2; if one is missing the loop is left
    as it is. MSVC's compiler has its own ``compile`` and is not touched.
    """
    jobs = int(os.environ.get("KMSENV_BUILD_JOBS") or os.cpu_count() or 1)
    if jobs < 2 or sys.platform == "win32":
        return
    from multiprocessing.pool import ThreadPool

    classes = []
    for name in ("setuptools._distutils.ccompiler", "distutils.ccompiler"):
        try:
            module = __import__(name, fromlist=["CCompiler"])
        except ImportError:
            continue
        cls = getattr(module, "CCompiler", None)
        if cls is not None and cls not in classes:
            classes.append(cls)

    def compile_all(self, sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                    extra_preargs=None, extra_postargs=None, depends=None):  # fmt: skip
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs
        )
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)

        def one(obj: str) -> None:
            if obj in build:
                src, ext = build[obj]
                self._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        with ThreadPool(min(jobs, max(1, len(objects)))) as pool:
            pool.map(one, objects)
        return objects

    for cls in classes:
        if all(hasattr(cls, m) for m in ("_setup_compile", "_get_cc_args", "_compile")):
            cls.compile = compile_all


_compile_in_parallel()

ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "kmsenv._native",
    '#include "kmsenv_core.h"',
    # setuptools compiles from ROOT and wants relative paths; run as a script,
    # cffi chdirs into build/cffi first, so the paths must be absolute there.
    sources=SOURCES if __name__ == "__main__" else [os.path.relpath(s, ROOT) for s in SOURCES],
    **_build_options(),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
