#!/usr/bin/env bash
# Proof on another distribution: Debian 11 (bullseye: glibc 2.31, Python 3.9, gcc 10, cmake 3.18).
#
#   scripts/debian11_proof.sh [--root-only] WHEEL SDIST
#
# 1. A bullseye root made with debootstrap, cached as a tarball (CAFFE2_ORT_DEBIAN_CACHE, default
#    ~/.cache/caffe2-ort/debian11) so later runs only unpack it.
# 2. Inside it (chroot, with /proc and /dev mounted for the run): the WHEEL built on this host plus
#    onnxruntime from PyPI, then `caffe2-ort check`, the conversion and run of a shared zoo net and the
#    op tests; then the same after building SDIST there with bullseye's own gcc and cmake.
# pip inside the root uses this host's pip configuration (its config files, and the local
# folders/indexes they name, bind-mounted read-only), and this host's pip cache.
# Needs root (debootstrap, chroot, mount). --root-only: stop after step 1.
set -euo pipefail
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root_only=0
if [[ "${1:-}" == "--root-only" ]]; then root_only=1; shift; fi
SUITE=bullseye
MIRROR=${CAFFE2_ORT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,g++,make,cmake,binutils,ca-certificates,xz-utils
CACHE=${CAFFE2_ORT_DEBIAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe2-ort/debian11}
# The tarball's name carries what went into it, so a change of packages makes a new one.
key=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
tarball="$CACHE/$SUITE-$key.tar.gz"
WORK=${CAFFE2_ORT_DEBIAN_WORK:-$ROOT_DIR/build/debian11}
chroot_dir="$WORK/root"

say() { printf '[debian11 %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

make_tarball() {
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  local tmp="$WORK/bootstrap"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$CACHE"
  say "debootstrap $SUITE from $MIRROR (once; cached as $tarball)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
  tar -C "$tmp" -czf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$tmp"
}

mkdir -p "$WORK"
[[ -f "$tarball" ]] || make_tarball
if [[ $root_only -eq 1 ]]; then say "root ready: $tarball"; exit 0; fi

[[ $# -eq 2 ]] || { echo "usage: $0 [--root-only] WHEEL SDIST" >&2; exit 2; }
wheel=$(realpath "$1")
sdist=$(realpath "$2")
shared=$(realpath "$ROOT_DIR/../shared")

mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind SRC DEST [ro]
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  if [[ "${3:-}" == ro ]]; then mount -o remount,bind,ro "$2"; fi
}

# Never delete through a mount left by an interrupted run (it would reach this host's files).
while read -r _ target _; do
  case "$target" in "$chroot_dir"/*) umount -l "$target" ;; esac
done < <(sort -r -k2 /proc/mounts)
if grep -q " $chroot_dir/" /proc/mounts; then echo "debian11_proof: mounts remain under $chroot_dir" >&2; exit 1; fi
rm -rf --one-file-system "$chroot_dir"
mkdir -p "$chroot_dir"
say "unpacking the root"
tar -C "$chroot_dir" -xzf "$tarball"
mount -t proc proc "$chroot_dir/proc"; mounts+=("$chroot_dir/proc")
bind /dev "$chroot_dir/dev"
cp -L /etc/resolv.conf "$chroot_dir/etc/resolv.conf"

# This host's pip configuration: its files, and every local folder or file:// index they name.
pip_cfg=$(python3 -m pip config list 2>/dev/null || true)
for f in /etc/pip.conf /etc/xdg/pip/pip.conf /etc/xdg/pip/constraints.txt "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
  if [[ -f "$f" ]]; then mkdir -p "$chroot_dir$(dirname "$f")"; cp "$f" "$chroot_dir$f"; fi
done
for p in $(printf '%s\n' "$pip_cfg" | grep -oE "(file://)?/[^' ]+" | sed 's|^file://||' | sort -u); do
  if [[ -f "$p" ]]; then  # e.g. the CA bundle pip trusts (this host's may hold a local CA)
    mkdir -p "$chroot_dir$(dirname "$p")"; cp -L "$p" "$chroot_dir$p"
  elif [[ -d "$p" ]]; then
    [[ "$(basename "$p")" == simple ]] && p=$(dirname "$p")  # a local index links to ../files
    mountpoint -q "$chroot_dir$p" 2>/dev/null || bind "$p" "$chroot_dir$p" ro
  fi
done
mkdir -p "$HOME/.cache/pip"
bind "$HOME/.cache/pip" "$chroot_dir/root/.cache/pip"
# ORT headers: the same cache as this host's builds (fetched inside if empty).
header_cache=${CAFFE2_ORT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe2-ort}
mkdir -p "$header_cache"
bind "$header_cache" "$chroot_dir/root/.cache/caffe2-ort"

proof="$chroot_dir/proof"
mkdir -p "$proof/repo" "$proof/dist"
cp "$wheel" "$sdist" "$proof/dist/"
# The checkout's files (the tests read a few sources); the package itself comes only from WHEEL/SDIST.
(cd "$ROOT_DIR" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null) |
  tar -C "$proof/repo" -xf -
rm -rf "$proof/repo/python"
bind "$shared" "$proof/shared" ro

cat >"$proof/run.sh" <<'EOF'
set -euo pipefail
export CI=true LC_ALL=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '[bullseye %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
say "$(. /etc/os-release; echo "$PRETTY_NAME"), $(ldd --version | head -n 1), $(python3 -V), $(g++ --version | head -n 1), $(cmake --version | head -n 1)"
net=/proof/shared/caffe2_models/bvlc_alexnet
check_env() {  # check_env VENV
  local py=$1/bin/python
  "$1/bin/caffe2-ort" check
  "$1/bin/caffe2-ort" synth-init "$net/predict_net.pbtxt" --value-info "$net/value_info.json" -o /tmp/alexnet_init.pb
  "$1/bin/caffe2-ort" convert "$net/predict_net.pbtxt" --init /tmp/alexnet_init.pb --value-info "$net/value_info.json" \
    -o /tmp/alexnet.onnx
  "$1/bin/caffe2-ort" run /tmp/alexnet.onnx
  (cd /proof/repo && "$py" -m pytest -q -p no:cacheprovider tests/test_dropout_cpu.py tests/test_op_errors.py \
     tests/test_rng_contract.py tests/test_library.py)
}
say "== the wheel built on the Debian 12 host"
python3 -m venv /proof/venv-wheel
/proof/venv-wheel/bin/python -m pip install -q --upgrade pip
wheel=$(ls /proof/dist/*.whl)
/proof/venv-wheel/bin/python -m pip install -q "$wheel[cpu,test]"
check_env /proof/venv-wheel
say "== the sdist, built here (gcc 10, cmake 3.18)"
python3 -m venv /proof/venv-sdist
/proof/venv-sdist/bin/python -m pip install -q --upgrade pip
sdist=$(ls /proof/dist/*.tar.gz)
/proof/venv-sdist/bin/python -m pip install -q "$sdist[cpu,test]"
lib=$(/proof/venv-sdist/bin/python -c "import caffe2_ort; print(caffe2_ort.get_library_path('cpu'))")
say "built $lib; newest glibc symbol version it needs: $(objdump -T "$lib" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1)"
check_env /proof/venv-sdist
say "Debian 11 proof passed"
EOF
say "running the proof inside the root"
chroot "$chroot_dir" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin TERM=dumb bash /proof/run.sh
