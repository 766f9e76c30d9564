#!/usr/bin/env bash
# tests/test_native_core.py under valgrind memcheck, against a private,
# unsanitized build of the C core (-O1 -g) in a temp dir.
#
#   scripts/valgrind-native.sh [extra pytest args]
#
# PYTHONMALLOC=malloc lets memcheck see every Python allocation;
# scripts/valgrind-python.supp silences CPython's own false positives (see the
# file) and nothing in kmsenv or OpenSSL.  OPENSSL_ia32cap masks AVX (bit 60)
# as csrc/tests/run.sh does: OpenSSL's AVX GHASH gives memcheck false
# "uninitialised" tags; the ASan runs cover those code paths.
# Leak checking is off (CPython keeps much alive at exit); the C harness
# (csrc/tests/run.sh) checks the core's own leaks.  Slow: about 2-4 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
command -v valgrind >/dev/null || { echo "valgrind-native: valgrind is not installed" >&2; exit 2; }
# The real interpreter (pyenv and similar put a shell script on PATH, which
# valgrind would trace instead of Python).
exe=$("$py" -c 'import sys; print(sys.executable)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src/kmsenv" "$work/pkg"
cp -r "$root/csrc" "$work/csrc"
cp "$root/src/kmsenv/_version.py" "$work/src/kmsenv/"
(cd "$work" && CFLAGS="-g -O1" "$py" csrc/build_native.py >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2; exit 1; }
so=$(find "$work/build/cffi" -name '_native*.so' | head -1)
(cd "$root/src" && tar --exclude='*.so' --exclude='__pycache__' -cf - kmsenv) | tar -xf - -C "$work/pkg"
cp "$so" "$work/pkg/kmsenv/"

export PYTHONPATH="$work/pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONMALLOC=malloc OPENSSL_ia32cap="~0x1000000000000000" KMSENV_REQUIRE_NATIVE=1
"$exe" -c "import sys, kmsenv._native as n; assert n.__file__.startswith(sys.argv[1]), n.__file__" "$work/pkg"
start=$(date +%s)
cd "$root"
set +e
valgrind --error-exitcode=99 --leak-check=no --num-callers=30 \
    --suppressions="$root/scripts/valgrind-python.supp" \
    "$exe" -m pytest -q -p no:cacheprovider tests/test_native_core.py "$@" >"$work/valgrind.log" 2>&1
rc=$?
set -e
# Reports (not the banner): any "==pid== <Capitalised error text>" followed by a stack.
grep -vE '^==[0-9]+== (Memcheck|Copyright|Using Valgrind|Command|Parent PID|$)' "$work/valgrind.log" \
    | grep -E '^==[0-9]+== ' | grep -vE 'HEAP SUMMARY|in use at exit|total heap usage|For lists|For a detailed|rerun with|ERROR SUMMARY|LEAK SUMMARY|Use --' \
    | head -60 || true
grep -vE '^==[0-9]+==' "$work/valgrind.log" | tail -3
summary=$(grep -E 'ERROR SUMMARY' "$work/valgrind.log" | tail -1 | sed -E 's/^==[0-9]+== //')
echo "valgrind-native: rc=$rc, $summary, $(( $(date +%s) - start ))s"
exit "$rc"
