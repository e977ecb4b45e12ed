#!/bin/sh
# Vendor onnxruntime-web (the version pinned in package-lock.json) and assemble the static page in web/dist/.
#   sh web/build.sh        -> web/dist/{index.html,demo.js,style.css,vendor/}
# Runs from a fresh clone: `npm ci` installs exactly the locked packages (no install scripts run).
# `python -m pipelines demo` copies the page and web/dist/vendor/ next to the models; nothing comes from a CDN.
set -eu
cd "$(dirname "$0")"
ORT=node_modules/onnxruntime-web
if [ ! -f "$ORT/package.json" ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --ignore-scripts --no-audit --no-fund
fi
WANT=$(node -p "require('./package.json').dependencies['onnxruntime-web']")
HAVE=$(node -p "require('./$ORT/package.json').version")
if [ "$WANT" != "$HAVE" ]; then
    echo "web/build.sh: onnxruntime-web $HAVE installed but $WANT pinned; run npm ci in web/" >&2
    exit 1
fi
rm -rf dist
mkdir -p dist/vendor
cp index.html demo.js style.css dist/
# The WebAssembly (CPU) build only: the ES module, its emscripten glue and the .wasm binary.
for f in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
    cp "$ORT/dist/$f" dist/vendor/
done
echo "$HAVE" > dist/vendor/VERSION
echo "web/dist: page + onnxruntime-web $HAVE ($(du -sh dist | cut -f1))"
