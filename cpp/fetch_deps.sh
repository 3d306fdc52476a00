#!/usr/bin/env bash
# Fetch the C++ build's dependencies into an ignored folder, without touching the
# system's apt setup: ONNX Runtime headers (Debian trixie's libonnxruntime-dev 1.21),
# nlohmann/json and stb, unpacked with `dpkg -x` by common/debian.py; the library is the onnxruntime
# wheel's libonnxruntime.so.1.31.1, linked through a libonnxruntime.so.1 symlink.
#
#   cpp/fetch_deps.sh DEST PYTHON
#
# DEST/root/usr/include holds the headers, DEST/root/lib the library symlinks. Reruns are no-ops.
set -euo pipefail
dest=$1
python=$2
packages=(libonnxruntime-dev nlohmann-json3-dev libstb-dev)
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

if [ ! -f "$dest/root/.unpacked" ]; then
  # common.debian: a private apt setup for trixie (the system's apt state untouched).
  rm -rf "$dest/root"
  (cd "$(dirname "$0")/.." && "$python" -m common.debian --dest "$dest" --suite trixie "${packages[@]}")
  test -f "$dest/root/usr/include/onnxruntime/onnxruntime_cxx_api.h"
  touch "$dest/root/.unpacked"
fi

lib=$("$python" -c 'import glob, os, onnxruntime as o
print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
mkdir -p "$dest/root/lib"
ln -sf "$lib" "$dest/root/lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$dest/root/lib/libonnxruntime.so"
