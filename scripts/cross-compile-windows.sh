#!/usr/bin/env bash
# Proves the C core (csrc/*.c) compiles for 64-bit Windows: a cross-compile with
# mingw-w64's gcc (x86_64-w64-mingw32-gcc, Debian package gcc-mingw-w64-x86-64-win32),
# with the flags of the real build (csrc/build_native.py) plus -Werror, so any
# warning fails. Objects only (-c) into a temp dir: nothing is linked, because
# there is no Windows libcrypto or Python here. Installs nothing itself.
#
# Two configurations, each over every csrc/*.c:
#   simd    what mingw gcc builds: the x86 SIMD kernels are in (it has
#           __attribute__((target)), <cpuid.h> and inline asm);
#   nosimd  what MSVC builds (-DKMSENV_NO_X86_SIMD): the kernels compiled out,
#           cpu.c's stub; and no csrc file or header may include a header MSVC
#           lacks (pthread.h, unistd.h, cpuid.h, ...): mingw-w64 ships them all
#           (its pthread.h is winpthreads), so a clean compile alone would not
#           show it. Checked on gcc's include tree (-H); mingw's own headers may
#           include them (its <intrin.h> includes <cpuid.h>), csrc's may not.
# Then the C harness (csrc/tests/*.c), compiled the same two ways, not run.
#
# Not compiled: src/kmsenv/_native.c, the module cffi generates at build time
# around these sources; it needs Windows Python headers (Python.h, pyconfig.h
# for win_amd64), which are not here. MSVC itself is not run either: only the
# wheels workflow's win_amd64 job compiles with it.
#
# Usage: bash scripts/cross-compile-windows.sh
#   MINGW_CC=...                      another mingw-w64 gcc (default x86_64-w64-mingw32-gcc)
#   KMSENV_WIN_OPENSSL_INCLUDE=dir    a real Windows OpenSSL 3 include dir (one with
#                                     openssl/configuration.h) instead of the host's headers
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
csrc="$root/csrc"
cc=${MINGW_CC:-x86_64-w64-mingw32-gcc}
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "cross-compile-windows: $cc not found (Debian: apt-get install gcc-mingw-w64-x86-64-win32)" >&2
    exit 2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# ---- OpenSSL 3 headers for the Windows target ------------------------------
# Debian packages no OpenSSL for mingw, so by default the host's OpenSSL 3
# headers (libssl-dev) are copied into a private tree: /usr/include/openssl plus
# the architecture-specific configuration.h / opensslconf.h from the multiarch
# directory. All of it is platform-neutral except one line of configuration.h,
# the bignum word: Linux x86_64/aarch64 (LP64) define SIXTY_FOUR_BIT_LONG,
# i.e. BN_ULONG is unsigned long; 64-bit Windows is LLP64 (long is 32 bits),
# and OpenSSL's Windows targets (VC-WIN64A, mingw64) define SIXTY_FOUR_BIT
# (BN_ULONG is unsigned long long) instead. The copy gets that change; the
# probe below fails if it did not take. The OPENSSL_NO_* list stays the host's:
# it only removes declarations the core does not use. The core is compiled
# against these headers' version (3.0 on Debian 12); the wheel uses 3.5.
inc="$out/include"
if [ -n "${KMSENV_WIN_OPENSSL_INCLUDE:-}" ]; then
    inc=$KMSENV_WIN_OPENSSL_INCLUDE
else
    mkdir -p "$inc/openssl"
    cp /usr/include/openssl/*.h "$inc/openssl/"
    multiarch=$("${HOST_CC:-gcc}" -print-multiarch 2>/dev/null || true)
    if [ -n "$multiarch" ] && [ -f "/usr/include/$multiarch/openssl/configuration.h" ]; then
        cp "/usr/include/$multiarch/openssl/"*.h "$inc/openssl/"
    fi
    conf="$inc/openssl/configuration.h"
    if [ ! -f "$conf" ]; then
        echo "cross-compile-windows: no OpenSSL 3 headers (Debian: apt-get install libssl-dev)" >&2
        exit 2
    fi
    sed -i -e 's/^\( *# *\)define SIXTY_FOUR_BIT_LONG$/\1undef SIXTY_FOUR_BIT_LONG/' \
        -e 's/^\( *# *\)undef SIXTY_FOUR_BIT$/\1define SIXTY_FOUR_BIT/' "$conf"
fi

# Same flags as csrc/build_native.py (plus -Werror, as CI and the wheels build
# with KMSENV_WARNINGS_AS_ERRORS=1, and -fvisibility=hidden of its static mode).
flags=(-c -std=c11 -O3 -Wall -Wextra -Werror -fno-strict-aliasing -fvisibility=hidden
    -I"$csrc" -I"$inc" '-DKMSENV_VERSION="cross"')

# The header tree describes Win64: OpenSSL 3, a 64-bit bignum word.
cat >"$out/probe.c" <<'EOF'
#include <openssl/bn.h>
#include <openssl/opensslv.h>
_Static_assert(OPENSSL_VERSION_MAJOR >= 3, "the C core needs OpenSSL 3 headers");
_Static_assert(sizeof(BN_ULONG) == 8, "configuration.h still has the LP64 (Linux) bignum word");
#if !defined(OPENSSL_SYS_WIN64)
#error "e_os2.h did not see a Win64 target"
#endif
EOF
"$cc" "${flags[@]}" "$out/probe.c" -o "$out/probe.o"

compile() { # config name, extra flags...: every csrc/*.c
    local name=$1 src
    shift
    mkdir -p "$out/$name"
    for src in "$csrc"/*.c; do
        "$cc" "${flags[@]}" "$@" "$src" -o "$out/$name/$(basename "${src%.c}").o"
    done
    echo "cross-compile-windows: $name: $(ls "$out/$name"/*.o | wc -l) objects"
}

# Headers that a file under csrc/ includes itself (not via a system header):
# gcc -H prints the include tree on stderr, one dot per nesting level.
csrc_includes() { # source file, extra flags...
    local src=$1
    shift
    "$cc" "${flags[@]}" "$@" -E -H "$src" -o /dev/null 2>&1 >/dev/null |
        awk -v src="$src" -v dir="$csrc/" '
            /^\.+ / {
                depth = length($1)
                parent = depth == 1 ? src : file[depth - 1]
                file[depth] = $2
                if (index(parent, dir) == 1) print $2
            }'
}

# The two configurations at once (one per core; `wait PID` fails the script if one failed).
compile simd &
simd_pid=$!
compile nosimd -DKMSENV_NO_X86_SIMD &
nosimd_pid=$!
wait "$simd_pid"
wait "$nosimd_pid"
# POSIX/GNU-only headers MSVC does not have.
msvc_lacks='/(pthread|unistd|cpuid|dlfcn|strings|x86intrin|sys/(mman|time|socket|wait))\.h$'
bad=0
for src in "$csrc"/*.c; do
    if csrc_includes "$src" -DKMSENV_NO_X86_SIMD | grep -E "$msvc_lacks"; then
        echo "cross-compile-windows: ^ included via $(basename "$src"); MSVC has no such header" >&2
        bad=1
    fi
done
[ "$bad" = 0 ]
echo "cross-compile-windows: nosimd: no header MSVC lacks"

compile_tests() { # config
    local config=$1 src extra=()
    mkdir -p "$out/tests-$config"
    [ "$config" = simd ] || extra=(-DKMSENV_NO_X86_SIMD)
    for src in "$csrc"/tests/*.c; do
        "$cc" "${flags[@]}" ${extra[@]+"${extra[@]}"} "$src" -o "$out/tests-$config/$(basename "${src%.c}").o"
    done
    echo "cross-compile-windows: tests ($config): $(ls "$out/tests-$config"/*.o | wc -l) objects"
}
compile_tests simd &
simd_pid=$!
compile_tests nosimd &
nosimd_pid=$!
wait "$simd_pid"
wait "$nosimd_pid"
echo "cross-compile-windows: OK ($("$cc" -dumpversion), $cc)"
