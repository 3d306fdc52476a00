#!/usr/bin/env bash
# Fetch the C++ build's dependencies into an ignored folder, without touching the
# system's apt setup: ONNX Runtime headers (Debian trixie's libonnxruntime-dev 1.21),
# nlohmann/json and stb, unpacked with `dpkg -x`; the library is the onnxruntime
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
  # The mirror this machine already uses for bookworm serves trixie too.
  uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  uri=${uri:-http://deb.debian.org/debian}
  mkdir -p "$dest/apt/sources" "$dest/apt/lists/partial" "$dest/apt/cache/archives/partial" "$dest/debs"
  cat >"$dest/apt/sources/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dest/apt/sources"
        -o "Dir::State::Lists=$dest/apt/lists" -o "Dir::Cache=$dest/apt/cache"
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get -qq "${opts[@]}" update
  (cd "$dest/debs" && apt-get -qq "${opts[@]}" download "${packages[@]}")
  rm -rf "$dest/root"
  for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest/root"; done
  test -f "$dest/root/usr/include/onnxruntime/onnxruntime_cxx_api.h"
  touch "$dest/root/.unpacked"
fi

lib=$("$python" -c 'import glob, os, onnxruntime as o
print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.1*")))[-1])')
mkdir -p "$dest/root/lib"
ln -sf "$lib" "$dest/root/lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$dest/root/lib/libonnxruntime.so"
