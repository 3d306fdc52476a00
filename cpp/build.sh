#!/usr/bin/env bash
# Fetch the dependencies (cpp/fetch_deps.sh) and build the C++ runtime.
#
#   cpp/build.sh BUILD_DIR PYTHON [CMAKE_ARGS...]
#
# Exit status 3: the dependencies could not be fetched (no network or no mirror);
# any other failure is the build's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1
python=$2
shift 2
deps=$here/../build/deps
if ! "$here/fetch_deps.sh" "$deps" "$python"; then
  echo "error: cannot fetch the C++ dependencies (Debian trixie's libonnxruntime-dev, nlohmann-json3-dev," \
       "libstb-dev) into $deps" >&2
  exit 3
fi
cmake -S "$here" -B "$build" -G Ninja -DDEPS_ROOT="$(cd "$deps" && pwd)/root" "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
