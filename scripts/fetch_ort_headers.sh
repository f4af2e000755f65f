#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers without touching the system's apt configuration:
# download Debian trixie's libonnxruntime-dev with a private sources list and state folder, then
# unpack it with dpkg -x. The headers are never committed; they live in the cache folder given
# as $1 (default .cache/ort-headers) and are reused on later builds.
#
# Prints the include folder (the one holding onnxruntime_c_api.h) on success.
set -euo pipefail

dest=${1:-"$(cd "$(dirname "$0")/.." && pwd)/.cache/ort-headers"}
package=${ORT_DEB_PACKAGE:-libonnxruntime-dev}
suite=${ORT_DEB_SUITE:-trixie}
mirror=${ORT_DEB_MIRROR:-http://deb.debian.org/debian}

include_dir="$dest/root/usr/include/onnxruntime"
if [ -f "$include_dir/onnxruntime_c_api.h" ]; then
  echo "$include_dir"
  exit 0
fi

fail() {
  cat >&2 <<MSG
error: could not fetch ONNX Runtime's headers ($1).
Point ORT_INCLUDE_DIR at the include/ folder of an ONNX Runtime release (the folder that holds
onnxruntime_c_api.h, e.g. from onnxruntime-linux-x64-1.21.0.tgz), for example:
  ORT_INCLUDE_DIR=/opt/onnxruntime-linux-x64-1.21.0/include pip install .
MSG
  exit 1
}

command -v apt-get >/dev/null || fail "apt-get not found"
command -v dpkg >/dev/null || fail "dpkg not found"

work="$dest/apt"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc" "$dest/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
[ -f "$keyring" ] && signed="[signed-by=$keyring] "
echo "deb ${signed}${mirror} ${suite} main" >"$work/etc/sources.list"
opts=(-o "Dir::Etc::sourcelist=$work/etc/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::status=/dev/null"
      -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")

apt-get "${opts[@]}" -qq update >&2 || fail "apt-get update of $suite failed"
(cd "$work" && apt-get "${opts[@]}" -qq download "$package" >&2) || fail "apt-get download $package failed"
deb=$(ls "$work"/"$package"_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || fail "no .deb downloaded"
dpkg -x "$deb" "$dest/root" || fail "dpkg -x failed"
[ -f "$include_dir/onnxruntime_c_api.h" ] || fail "the package holds no onnxruntime_c_api.h"
rm -rf "$work"
echo "$include_dir"
