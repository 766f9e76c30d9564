#!/usr/bin/env bash
# Builds csrc/tests/test_simd.c (SIMD kernels vs OpenSSL EVP) and runs it:
#   1. ASan + UBSan with the kernels active (they SKIP on CPUs without them);
#   2. ASan + UBSan with KMSENV_DISABLE_SIMD=1 (dispatch off: all SKIP, and
#      kmsenv_features() must not report the SIMD bits);
#   3. valgrind, dispatch off: valgrind 3.19's virtual CPU does not report
#      VAES (features 0x3 under it even without the switch), so the kernels
#      cannot run there; they are covered by the ASan+UBSan run, and valgrind
#      checks the dispatch-off build for leaks and uninitialised reads.
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

echo "== SIMD kernels: ASan+UBSan"
link "$here/test_simd.c" test_simd_asan "${san[@]}"
env -u KMSENV_DISABLE_SIMD ASAN_OPTIONS=detect_leaks=1 "$out/test_simd_asan"
# Every kernel through the key API, each forced in turn (one the CPU lacks
# reports SKIP with the selector's warning; kernels.c's self-test also runs).
for pair in aes:vaes512:sm4:gfni512-vpclmul aes:vaes512:sm4:gfni512 aes:vaes256:sm4:gfni256 \
    aes:evp:sm4:aesni-avx2; do
    IFS=: read -r _ aes _ sm4 <<<"$pair"
    echo "== SIMD kernels: ASan+UBSan, KMSENV_AES_GCM_KERNEL=$aes KMSENV_SM4_KERNEL=$sm4"
    env -u KMSENV_DISABLE_SIMD KMSENV_AES_GCM_KERNEL="$aes" KMSENV_SM4_KERNEL="$sm4" \
        ASAN_OPTIONS=detect_leaks=1 "$out/test_simd_asan"
done
for t in test_aes512 test_sm4_gfni; do
    [ -f "$here/$t.c" ] || continue
    echo "== $t: ASan+UBSan"
    link "$here/$t.c" "${t}_asan" "${san[@]}"
    env -u KMSENV_DISABLE_SIMD ASAN_OPTIONS=detect_leaks=1 "$out/${t}_asan"
done
echo "== SIMD kernels: ASan+UBSan, KMSENV_DISABLE_SIMD=1"
KMSENV_DISABLE_SIMD=1 ASAN_OPTIONS=detect_leaks=1 "$out/test_simd_asan"
if command -v valgrind >/dev/null 2>&1; then
    echo "== SIMD test under valgrind, KMSENV_DISABLE_SIMD=1 (kernels: see ASan run)"
    link "$here/test_simd.c" test_simd_plain -g -O1
    KMSENV_DISABLE_SIMD=1 OPENSSL_ia32cap="~0x1000000000000000" \
        valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        "$out/test_simd_plain"
fi
