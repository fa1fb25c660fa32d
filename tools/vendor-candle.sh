#!/usr/bin/env bash
# Re-creates vendor/candle-core: candle-core as published on crates.io plus three patches: one to
# its autograd (tools/patch_candle_backprop.py), kept with candle's own gradient tests
# (tests/suite/candle_autograd.rs runs them), the capture probe
# (tools/patch_candle_probe.py: a thread-local trace of storage ops, uploads and reads that the
# capture check of src/train/capture.rs reads), and a multi-tensor in-place op
# (tools/patch_candle_foreach.py: the optimizer's one pass over a parameter group).
#
# Why: candle's backward pass starts every gradient from zeros_like and adds the incoming
# gradient to it (backprop.rs, `or_insert` + `add`): a memset and a full add per graph node,
# single-threaded on CPU. On the tiny model that was ~20% of a training step. The patch stores
# the first gradient as is and adds only when a second consumer contributes.
#
# Usage: tools/vendor-candle.sh [CANDLE_CORE_SRC]
#   CANDLE_CORE_SRC defaults to candle-core-$VERSION in cargo's registry (run `cargo fetch`
#   against an unpatched Cargo.toml first if it is missing).
set -euo pipefail
VERSION=0.11.1
cd "$(dirname "$0")/.."
src=${1:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-$VERSION 2>/dev/null | head -1)}
[ -d "$src" ] || { echo "candle-core $VERSION source not found (pass its folder)" >&2; exit 1; }
dst=vendor/candle-core
mkdir -p vendor
tmp=$(mktemp -d vendor/.candle-core.XXXX)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/src" "$src/LICENSE" "$src/README.md" "$tmp/"
mkdir "$tmp/tests"
cp "$src/tests/grad_tests.rs" "$tmp/tests/"
# Keep the manifest, minus the examples, benches and tests not copied above.
python3 - "$src/Cargo.toml" "$tmp/Cargo.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
keep_tests = {"grad_tests"}
out = []
for block in re.split(r'\n(?=\[)', text):
    head = block.split('\n', 1)[0]
    if head in ('[[example]]', '[[bench]]'):
        continue
    if head == '[[test]]':
        name = re.search(r'name = "([^"]+)"', block).group(1)
        if name not in keep_tests:
            continue
    out.append(block)
open(sys.argv[2], 'w').write('\n'.join(out))
PY
python3 tools/patch_candle_backprop.py "$tmp/src/backprop.rs"
python3 tools/patch_candle_probe.py "$tmp/src"
python3 tools/patch_candle_foreach.py "$tmp/src"
chmod -R u+w "$tmp"
rm -rf "$dst"
mv "$tmp" "$dst"
trap - EXIT
echo "vendored candle-core $VERSION into $dst"
