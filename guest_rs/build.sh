#!/bin/sh
# Build the realm guest (wasm32, SIMD128) and the model metadata module (guest_rs/meta/, sharing the
# guest's abi.rs, quants.rs and kernels.rs through #[path] modules) and ship them as
# realm/guest/realm_guest.wasm and realm/guest/realm_meta.wasm.
#
# Toolchain: Debian's rustc/cargo 1.63 with the wasm32 std (apt: rustc cargo libstd-rust-dev-wasm32 lld);
# rustup's cargo (first on PATH here) lacks wasm32, so /usr/bin is used explicitly (override with
# CARGO= / RUSTC=). The build is reproducible from any checkout path (--remap-path-prefix).
#
# SOURCE_HASH rule (guest_rs/source_hash.py implements it; tests recompute it):
#   files = Cargo.toml, Cargo.lock (if present), build.sh, source_hash.py, src/**/*.rs and, of the
#   metadata crate, meta/Cargo.toml, meta/Cargo.lock, meta/*.py (table generators), meta/src/**/*.rs,
#   as paths relative to guest_rs/ with '/' separators, sorted by their UTF-8 bytes;
#   sha256 over, for each file in that order: path bytes + b"\0" + file bytes + b"\0".
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
CARGO=${CARGO:-/usr/bin/cargo}
RUSTC=${RUSTC:-/usr/bin/rustc}
target_dir=${CARGO_TARGET_DIR:-$here/target}
export RUSTC
export RUSTFLAGS="-C target-feature=+simd128 --remap-path-prefix=$here=/realm/guest_rs --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
cd "$here"
"$CARGO" build --offline --release --target wasm32-unknown-unknown --target-dir "$target_dir"
mkdir -p "$root/realm/guest"
cp "$target_dir/wasm32-unknown-unknown/release/realm_guest.wasm" "$root/realm/guest/realm_guest.wasm"
(cd "$here/meta" && "$CARGO" build --offline --release --target wasm32-unknown-unknown --target-dir "$target_dir")
cp "$target_dir/wasm32-unknown-unknown/release/realm_meta.wasm" "$root/realm/guest/realm_meta.wasm"
python3 "$here/source_hash.py" > "$root/realm/guest/SOURCE_HASH"
echo "built $root/realm/guest/realm_guest.wasm ($(wc -c < "$root/realm/guest/realm_guest.wasm") bytes)," \
     "$root/realm/guest/realm_meta.wasm ($(wc -c < "$root/realm/guest/realm_meta.wasm") bytes)," \
     "SOURCE_HASH $(cat "$root/realm/guest/SOURCE_HASH")"
