# Sourced by run.sh and run_simd.sh: core_objs FLAGS... compiles every
# csrc/*.c once per distinct flag set (all files at once, in the background,
# so both cores work) into $out/obj-<hash of the flags>, and sets
# CORE_OBJS_DIR to it. Each test binary then only compiles its own file and
# links: with the SIMD kernels the core takes long enough to compile that
# rebuilding it for every test binary dominated the C harness.
# Needs: cc, common (array), csrc, out. KMSENV_CORE_OBJS: where to keep the
# objects instead of $out (run.sh shares its own with run_simd.sh).
core_objs() {
    local key dir f pids=() p
    key=$(printf '%s\n' "$cc" "${common[@]}" "$@" | cksum | cut -d' ' -f1)
    dir="${KMSENV_CORE_OBJS:-$out}/obj-$key"
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir.tmp"
        for f in "$csrc"/*.c; do
            "$cc" "${common[@]}" "$@" -c "$f" -o "$dir.tmp/$(basename "${f%.c}").o" &
            pids+=("$!")
        done
        for p in "${pids[@]}"; do
            wait "$p" # set -e: a failed compile ends the run here
        done
        mv "$dir.tmp" "$dir"
    fi
    CORE_OBJS_DIR=$dir
}
