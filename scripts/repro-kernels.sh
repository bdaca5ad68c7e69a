#!/usr/bin/env bash
# Builds every kernel recipe twice from scratch, in two fresh stores with two fresh caches
# (so two different build directories), under different TZ, umask and LC_ALL, and checks that
# every output has the same sha256. Slow: each kernel is built twice (tens of minutes on 2 CPUs).
#   scripts/repro-kernels.sh [kernel-recipe...]     default: every recipes/kernel*.toml
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q -p imagegen
imagegen="$root/target/release/imagegen"
if [ $# -eq 0 ]; then
    set -- $(cd recipes && ls kernel*.toml | sed 's/\.toml$//')
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/repro-kernels.XXXXXX")
trap 'rm -rf "$work"' EXIT
build() { # name tz umask lc_all
    mkdir -p "$work/$1/cwd"
    (cd "$work/$1/cwd" && umask "$3" && TZ="$2" LC_ALL="$4" \
        "$imagegen" --root "$root" --store "$work/$1/store" --cache "$work/$1/cache" build "${@:5}")
    "$imagegen" --root "$root" --store "$work/$1/store" list | tail -n +2 | awk '{print $1, $2, $3}' | sort
}
echo "== first build" >&2
build a UTC 022 C "$@" > "$work/a.txt"
echo "== second build" >&2
build b Asia/Kathmandu 077 C.UTF-8 "$@" > "$work/b.txt"
if diff -u "$work/a.txt" "$work/b.txt"; then
    echo "reproducible:"
    cat "$work/a.txt"
else
    echo "NOT reproducible (see the diff above)" >&2
    exit 1
fi
