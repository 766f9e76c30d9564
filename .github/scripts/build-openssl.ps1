# Windows counterpart of build-openssl.sh: the same pinned, sha256-checked
# OpenSSL (the pin is read from build-openssl.sh, so there is one), built as a
# static libcrypto.lib with MSVC. Run by cibuildwheel's before-all from a shell
# that already has the MSVC environment (vcvars64), NASM and Strawberry Perl;
# wheels.yml sets those up. OpenSSL compiles its static libraries with /MT /Zl,
# i.e. with no C runtime named, so they link into the /MD extension module.
#
# usage: pwsh -File build-openssl.ps1 PREFIX
param([Parameter(Mandatory = $true)][string]$Prefix)
$ErrorActionPreference = 'Stop'

$pin = Get-Content -Raw (Join-Path $PSScriptRoot 'build-openssl.sh')
# \r?: the checkout may have CRLF line endings on Windows.
$version = [regex]::Match($pin, '(?m)^PINNED_VERSION=([0-9][0-9.]*)\r?$').Groups[1].Value
$sha256 = [regex]::Match($pin, '(?m)^PINNED_SHA256=([0-9a-f]{64})\r?$').Groups[1].Value
if (-not $version -or -not $sha256) { throw 'could not read the pin from build-openssl.sh' }

$Prefix = [IO.Path]::GetFullPath($Prefix)
$stamp = Join-Path $Prefix ".kmsenv-openssl-$version-$sha256"
if (Test-Path $stamp) { Write-Host "OpenSSL $version already in $Prefix"; exit 0 }

foreach ($tool in 'cl', 'nmake', 'nasm') {
    if (-not (Get-Command $tool -ErrorAction SilentlyContinue)) { throw "$tool is not on PATH" }
}
# Git's perl (msys) cannot drive an MSVC build; OpenSSL wants a native Perl.
$perl = 'C:\Strawberry\perl\bin\perl.exe'
if (-not (Test-Path $perl)) { throw "Strawberry Perl not found at $perl" }

$work = Join-Path ([IO.Path]::GetTempPath()) "kmsenv-openssl-$version"
New-Item -ItemType Directory -Force -Path $work | Out-Null
$tarball = Join-Path $work "openssl-$version.tar.gz"
Invoke-WebRequest -UseBasicParsing -OutFile $tarball `
    -Uri "https://github.com/openssl/openssl/releases/download/openssl-$version/openssl-$version.tar.gz"
$actual = (Get-FileHash -Algorithm SHA256 -LiteralPath $tarball).Hash.ToLowerInvariant()
if ($actual -ne $sha256) { throw "sha256 mismatch for openssl-${version}.tar.gz: expected $sha256, got $actual" }
Write-Host "openssl-$version.tar.gz sha256 OK ($actual)"

# Windows' own bsdtar, not whichever tar another toolchain put first on PATH.
& "$env:SystemRoot\System32\tar.exe" -xzf $tarball -C $work
if ($LASTEXITCODE) { throw 'tar failed' }

Push-Location (Join-Path $work "openssl-$version")
try {
    # Same options as build-openssl.sh; SM4 stays enabled.
    & $perl Configure VC-WIN64A no-shared no-module no-legacy no-engine no-tests `
        "--prefix=$Prefix" "--openssldir=$Prefix\ssl"
    if ($LASTEXITCODE) { throw 'Configure failed' }
    nmake /nologo build_libs
    if ($LASTEXITCODE) { throw 'nmake build_libs failed' }
    nmake /nologo install_dev
    if ($LASTEXITCODE) { throw 'nmake install_dev failed' }
} finally {
    Pop-Location
}

if (Select-String -Quiet -Pattern 'define OPENSSL_NO_SM4' -Path (Join-Path $Prefix 'include\openssl\configuration.h')) {
    throw 'this OpenSSL was configured without SM4'
}
if (-not (Test-Path (Join-Path $Prefix 'lib\libcrypto.lib'))) { throw "no lib\libcrypto.lib under $Prefix" }
New-Item -ItemType File -Force -Path $stamp | Out-Null
Write-Host "OpenSSL $version (static libcrypto.lib) installed in $Prefix"
