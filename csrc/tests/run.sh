#!/usr/bin/env bash
# Builds csrc/tests/test_core.c (and test_frames.c, test_columns.c) against the core's sources and runs them:
#   1. ASan + UBSan with a 48-byte EVP chunk (drives the INT_MAX split loops);
#   2. ASan + UBSan with the production chunk size;
#   3. if valgrind is installed, a plain build under valgrind (leaks included).
# Any failure exits non-zero. Set KMSENV_TEST_OUT to keep the binaries.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
csrc=$(dirname "$here")
out=${KMSENV_TEST_OUT:-$(mktemp -d)}
[ -n "${KMSENV_TEST_OUT:-}" ] || trap 'rm -rf "$out"' EXIT
mkdir -p "$out"

cc=${CC:-gcc}
common=(-std=c11 -Wall -Wextra -Werror -I"$csrc" '-DKMSENV_VERSION="test"')
san=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1)
. "$here/core_objs.sh" # core_objs: the core compiled once per flag set, in parallel

link() { # test source, binary name, extra flags...
    local src=$1 name=$2
    shift 2
    core_objs "$@"
    "$cc" "${common[@]}" "$@" "$src" "$CORE_OBJS_DIR"/*.o -lcrypto -lpthread -o "$out/$name"
}
build() { link "$here/test_core.c" "$@"; }          # name, extra flags...
build_frames() { link "$here/test_frames.c" "$@"; }  # frames.c's own tests
build_columns() { link "$here/test_columns.c" "$@"; } # arrow.c and compact.c

echo "== ASan+UBSan, KMSENV_EVP_CHUNK=48"
build test_core_asan_chunk "${san[@]}" -DKMSENV_EVP_CHUNK=48
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 "$out/test_core_asan_chunk"
build_frames test_frames_asan_chunk "${san[@]}" -DKMSENV_EVP_CHUNK=48
ASAN_OPTIONS=detect_leaks=1 "$out/test_frames_asan_chunk"
build_columns test_columns_asan_chunk "${san[@]}" -DKMSENV_EVP_CHUNK=48
ASAN_OPTIONS=detect_leaks=1 "$out/test_columns_asan_chunk"
link "$here/test_sm2.c" test_sm2_asan "${san[@]}" # SM2/SM3 (sm2.c, issue 15)
ASAN_OPTIONS=detect_leaks=1 "$out/test_sm2_asan"

echo "== ASan+UBSan, default chunk"
build test_core_asan "${san[@]}"
ASAN_OPTIONS=detect_leaks=1 "$out/test_core_asan"
build_frames test_frames_asan "${san[@]}"
ASAN_OPTIONS=detect_leaks=1 "$out/test_frames_asan"

# The frame workers share a claim counter and a stop flag: ThreadSanitizer
# checks that they share nothing else (it exits non-zero on any report). Only
# the threading code is instrumented (frames.c, thread.c and the test); the
# rest of the core comes from the plain -g -O1 objects valgrind uses too, so
# this costs three compiles instead of a whole TSan build of the kernels.
echo "== TSan, frames"
core_objs -g -O1
mkdir -p "$out/tsan"
for f in "$csrc/frames.c" "$csrc/thread.c" "$here/test_frames.c"; do
    "$cc" "${common[@]}" -fsanitize=thread -g -O1 -c "$f" -o "$out/tsan/$(basename "${f%.c}").o"
done
"$cc" -fsanitize=thread "$out"/tsan/*.o \
    $(ls "$CORE_OBJS_DIR"/*.o | grep -v -e '/frames\.o$' -e '/thread\.o$') -lcrypto -lpthread \
    -o "$out/test_frames_tsan"
TSAN_OPTIONS=halt_on_error=1 "$out/test_frames_tsan"

if command -v valgrind >/dev/null 2>&1; then
    echo "== valgrind, KMSENV_EVP_CHUNK=48"
    build test_core_plain -g -O1 -DKMSENV_EVP_CHUNK=48
    # OpenSSL's AVX GHASH (gcm_ghash_avx) makes memcheck report false
    # "uninitialised" tags after EVP SM4-CTR code has run: reproduced with
    # OpenSSL's own AES-keyed gcm128 and a memcpy stream, no kmsenv data
    # involved. Masking AVX (bit 60) selects the PCLMUL GHASH, which memcheck
    # models exactly; the SIMD paths themselves are covered by the ASan runs.
    OPENSSL_ia32cap="~0x1000000000000000" \
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$out/test_core_plain"
    build_frames test_frames_plain -g -O1 -DKMSENV_EVP_CHUNK=48
    OPENSSL_ia32cap="~0x1000000000000000" \
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$out/test_frames_plain"
    build_columns test_columns_plain -g -O1
    OPENSSL_ia32cap="~0x1000000000000000" \
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$out/test_columns_plain"
    link "$here/test_sm2.c" test_sm2_plain -g -O1
    valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$out/test_sm2_plain"
else
    echo "== valgrind not found, skipped"
fi
KMSENV_CORE_OBJS="$out" KMSENV_TEST_OUT="$out/simd" bash "$here/run_simd.sh" # SIMD kernels vs EVP (issue 5)
