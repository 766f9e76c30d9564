#!/usr/bin/env bash
# Builds the OpenSSL that goes into kmsenv's wheels: a pinned, sha256-checked
# OpenSSL 3.5 LTS, libcrypto only, static (no-shared), installed under PREFIX.
# build_native.py then links PREFIX/lib/libcrypto.a with its symbols hidden
# (KMSENV_OPENSSL_DIR=PREFIX), so the wheel neither depends on nor clashes with
# any other libcrypto in the process.
#
# Used by cibuildwheel's before-all on manylinux (dnf/yum), musllinux (apk) and
# macOS; Windows uses build-openssl.ps1, which reads the pin below.
#
# usage: build-openssl.sh PREFIX
# env:   OPENSSL_TARBALL=/path  use this file instead of downloading (still checked)
#        OPENSSL_VERSION + OPENSSL_SHA256  try another release (both or neither)
set -euo pipefail

# The pin. sha256 is the one OpenSSL publishes (openssl-X.tar.gz.sha256 on the
# release page); it also matches Debian's openssl_3.5.9.orig.tar.gz entry.
PINNED_VERSION=3.5.9
PINNED_SHA256=603f5602e2eef00d77fbd429d34dcd5822bb301757a1bc9cdb24c670f1eb859a

PREFIX=${1:?usage: build-openssl.sh PREFIX}
if [ -n "${OPENSSL_VERSION:-}${OPENSSL_SHA256:-}" ] && { [ -z "${OPENSSL_VERSION:-}" ] || [ -z "${OPENSSL_SHA256:-}" ]; }; then
  echo "build-openssl.sh: set OPENSSL_VERSION and OPENSSL_SHA256 together" >&2
  exit 2
fi
VERSION=${OPENSSL_VERSION:-$PINNED_VERSION}
SHA256=${OPENSSL_SHA256:-$PINNED_SHA256}
STAMP="$PREFIX/.kmsenv-openssl-$VERSION-$SHA256"

if [ -f "$STAMP" ]; then
  echo "build-openssl.sh: OpenSSL $VERSION already in $PREFIX"
  exit 0
fi

# Perl modules OpenSSL's Configure and build scripts load. RHEL-family images
# split core Perl into packages, so ask for them by module name.
PERL_MODULES=(IPC::Cmd FindBin File::Compare File::Copy File::Temp Digest::SHA)
install_build_deps() {
  local provides=() m
  for m in "${PERL_MODULES[@]}"; do provides+=("perl($m)"); done
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q perl-interpreter make "${provides[@]}"
  elif command -v yum >/dev/null 2>&1; then
    yum install -y -q perl make "${provides[@]}"
  elif command -v apk >/dev/null 2>&1; then
    apk add --no-cache perl linux-headers make
  fi
  # macOS and Debian already have a complete Perl; check rather than assume.
  for m in "${PERL_MODULES[@]}"; do
    perl -M"$m" -e 1 || { echo "build-openssl.sh: Perl module $m missing" >&2; exit 1; }
  done
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

ncpu() {
  getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2
}

install_build_deps

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TARBALL="$WORK/openssl-$VERSION.tar.gz"
if [ -n "${OPENSSL_TARBALL:-}" ]; then
  cp "$OPENSSL_TARBALL" "$TARBALL"
else
  # openssl.org/source redirects to the GitHub release assets; ask there first.
  for url in "https://github.com/openssl/openssl/releases/download/openssl-$VERSION/openssl-$VERSION.tar.gz" \
             "https://www.openssl.org/source/openssl-$VERSION.tar.gz"; do
    if command -v curl >/dev/null 2>&1; then
      curl -fsSL --retry 3 -o "$TARBALL" "$url" && break
    else
      wget -q -O "$TARBALL" "$url" && break
    fi
  done
fi
actual=$(sha256_of "$TARBALL")
if [ "$actual" != "$SHA256" ]; then
  echo "build-openssl.sh: sha256 mismatch for openssl-$VERSION.tar.gz" >&2
  echo "  expected $SHA256" >&2
  echo "  got      $actual" >&2
  exit 1
fi
echo "build-openssl.sh: openssl-$VERSION.tar.gz sha256 OK ($actual)"

tar -xzf "$TARBALL" -C "$WORK"
cd "$WORK/openssl-$VERSION"
# no-shared: libcrypto.a only (position independent: OpenSSL keeps -fPIC on).
# no-module: providers built in, nothing loaded from disk at run time.
# no-legacy/no-engine/no-tests: not used by kmsenv, less code and build time.
# SM4 stays on: the C core builds SM4-GCM from EVP SM4-ECB/CTR + CRYPTO_gcm128.
# --openssldir inside PREFIX: a path that will not exist on users' machines, so
# the wheel never reads some other OpenSSL's openssl.cnf.
./Configure no-shared no-module no-legacy no-engine no-tests \
  --prefix="$PREFIX" --openssldir="$PREFIX/ssl" --libdir=lib
make -s -j"$(ncpu)" build_libs
make -s install_dev

# What the C core needs must be in the archive; fail here, not in a user's import.
conf="$PREFIX/include/openssl/configuration.h"
if grep -q 'define OPENSSL_NO_SM4' "$conf"; then
  echo "build-openssl.sh: this OpenSSL was configured without SM4" >&2
  exit 1
fi
# (nm to a file first: grep -q in a pipe would SIGPIPE nm and trip pipefail.)
nm "$PREFIX/lib/libcrypto.a" >"$WORK/nm.txt" 2>/dev/null
for sym in EVP_CIPHER_fetch EVP_sm4_ecb EVP_sm4_ctr EVP_aes_256_gcm CRYPTO_gcm128_new CRYPTO_gcm128_encrypt_ctr32; do
  # nm prints the symbol with a leading underscore on macOS.
  grep -Eq " T _?$sym\$" "$WORK/nm.txt" || {
    echo "build-openssl.sh: libcrypto.a does not define $sym" >&2
    exit 1
  }
done
touch "$STAMP"
echo "build-openssl.sh: OpenSSL $VERSION (static libcrypto) installed in $PREFIX"
