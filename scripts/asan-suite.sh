#!/usr/bin/env bash
# The Python test suite's native parts against the C core built with
# AddressSanitizer + UndefinedBehaviorSanitizer (KMSENV_SANITIZE=1).
#
#   scripts/asan-suite.sh [extra pytest args]
#
# 1. builds the sanitized kmsenv._native into a temp dir (never into src/):
#    a copy of csrc/ + _version.py, built with csrc/build_native.py, then a copy
#    of src/kmsenv with that module in it, put first on PYTHONPATH;
# 2. proves ASan is live: the module in use is the temp one, libasan is mapped,
#    and a canary that reads past a heap buffer through the real cffi entry
#    point (kmsenv_gcm_open_messages with a lying offset) must die with an ASan
#    heap-buffer-overflow report;
# 3. runs the native-facing tests with LD_PRELOAD=libasan, PYTHONMALLOC=malloc
#    (so Python buffers handed to C get ASan redzones), detect_leaks=0 (CPython
#    leaks by design) and UBSan halting with a stack trace.
# Env: KMSENV_ASAN_SLOW=1 also runs the tests marked slow;
# KMSENV_ASAN_FUZZ_SECONDS=N also runs fuzz/fuzz_native_open_messages.py
# for N seconds under the same ASan build (needs atheris).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
cc=${CC:-gcc}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
say() { printf '\n== asan-suite: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

libasan=$("$cc" -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "asan-suite: $cc has no libasan.so ($libasan)" >&2; exit 2; }

say "build the sanitized core in $work"
mkdir -p "$work/src/kmsenv" "$work/pkg"
cp -r "$root/csrc" "$work/csrc"
cp "$root/src/kmsenv/_version.py" "$work/src/kmsenv/"
(cd "$work" && KMSENV_SANITIZE=1 "$py" csrc/build_native.py >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2; exit 1; }
so=$(find "$work/build/cffi" -name '_native*.so' | head -1)
[ -n "$so" ] || { echo "asan-suite: no module built" >&2; exit 1; }
(cd "$root/src" && tar --exclude='*.so' --exclude='__pycache__' -cf - kmsenv) | tar -xf - -C "$work/pkg"
cp "$so" "$work/pkg/kmsenv/"
syms=$(nm -D "$so")
grep -q ' U __asan_report_load' <<<"$syms" || { echo "asan-suite: $so is not ASan-instrumented" >&2; exit 1; }
grep -q ' U __ubsan_handle' <<<"$syms" || { echo "asan-suite: $so is not UBSan-instrumented" >&2; exit 1; }

export PYTHONPATH="$work/pkg:$root/fuzz${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$libasan"
export PYTHONMALLOC=malloc
# max_allocation_size_mb + allocator_may_return_null: a hostile 4 GiB allocation is a
# MemoryError, as RLIMIT_AS makes it without ASan (whose shadow mapping defeats RLIMIT_AS).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:print_summary=1:max_allocation_size_mb=3072:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export KMSENV_REQUIRE_NATIVE=1 KMSENV_BACKEND=native

say "check the sanitized module is the one loaded and ASan is mapped"
"$py" - "$work/pkg" <<'PY'
import sys, kmsenv
from kmsenv import _native
assert _native.__file__.startswith(sys.argv[1]), _native.__file__
assert kmsenv.native_available(), kmsenv.backend_info()
maps = open("/proc/self/maps").read()
assert "libasan" in maps and "libubsan" in maps, "sanitizer runtimes not mapped"
print("loaded", _native.__file__, "| libasan and libubsan mapped | backend", kmsenv.backend_name())
PY

say "canary: an out-of-bounds read through cffi must be caught"
set +e
"$py" - >"$work/canary.log" 2>&1 <<'PY'
from kmsenv._native import ffi, lib
key = ffi.new("kmsenv_key **")
assert lib.kmsenv_key_new(lib.KMSENV_CIPHER_AES, bytes(32), 32, key) == 0
buf = ffi.new("uint8_t[]", b"\x30\x82\x01\x00")  # claims 256 bytes, has 5 (incl. NUL)
offsets = ffi.new("size_t[]", [0, 260])          # the lie: 260 bytes of input
out = ffi.new("uint8_t[]", 260)
out_off = ffi.new("size_t[]", 2)
status = ffi.new("int[]", 1)
header = b"\x30\x00"
lib.kmsenv_gcm_open_messages(key[0], header, 2, b"", 0, 1, buf, offsets, out, 260, out_off, status)
print("CANARY SURVIVED: ASan is not active")
PY
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q "heap-buffer-overflow" "$work/canary.log"; then
    echo "asan-suite: the canary was not caught (rc=$rc):" >&2
    cat "$work/canary.log" >&2
    exit 1
fi
echo "canary caught: $(grep -m1 -o 'ERROR: AddressSanitizer: heap-buffer-overflow[^(]*' "$work/canary.log") (rc=$rc)"
grep -m1 -E '#[0-9]+ .* in (parse_message|der_header|kmsenv_[a-z_]+)' "$work/canary.log" || true

say "pytest under ASan+UBSan"
tests=(test_native_core test_backends_agree test_engine test_official_vectors test_known_answers
       test_message_codec test_properties)
for extra in test_stream_framed test_stream_alibaba test_stream_api test_simd_dispatch test_arrow; do
    [ -f "$root/tests/$extra.py" ] && tests+=("$extra")
done
paths=()
for t in "${tests[@]}"; do
    [ -f "$root/tests/$t.py" ] && paths+=("$root/tests/$t.py")
done
# Tests marked slow (the 2 GiB streaming round trips) take minutes under ASan
# and add no new code paths: KMSENV_ASAN_SLOW=1 includes them.
marker=(-m "not slow")
[ "${KMSENV_ASAN_SLOW:-0}" = 1 ] && marker=()
# The pure-backend variants never enter the C core: leave them to the normal run.
(cd "$root" && KMSENV_TEST_BACKENDS=native "$py" -m pytest -q -p no:cacheprovider "${marker[@]}" "${paths[@]}" "$@")

if [ -n "${KMSENV_ASAN_FUZZ_SECONDS:-}" ]; then
    say "fuzz_native_open_messages under ASan for ${KMSENV_ASAN_FUZZ_SECONDS}s"
    "$py" "$root/fuzz/make_corpus.py" "$work/seeds" >/dev/null
    mkdir -p "$work/corpus"
    KMSENV_FUZZ_AS_HEADROOM_MB=100000 "$py" "$root/fuzz/fuzz_native_open_messages.py" "$work/corpus" \
        "$work/seeds/native_open_messages" -max_total_time="$KMSENV_ASAN_FUZZ_SECONDS" -print_final_stats=1 \
        -artifact_prefix="$work/" 2>&1 | grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed|ERROR|SUMMARY' || true
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "asan-suite: fuzzing under ASan found something" >&2; exit 1; }
fi
say "done"
