#!/usr/bin/env bash
# Lays out the CUDA toolkit pinned in scripts/cuda-wheels.txt (NVIDIA's wheels
# from PyPI, hash-checked) as a directory nvcc, cudaforge and cudarc
# recognise, and prints its path. Used by scripts/check-cuda.sh (make
# check-cuda) and inference/Dockerfile.cuda, so both compile with the same
# artifacts. Needs python3 with pip, unzip and flock; no GPU, no driver.
#
#   scripts/cuda-toolkit.sh           into $BACKHAUL_CACHE/cuda/toolkit-<hash of
#                                     cuda-wheels.txt>-<layout>, shared by
#                                     every clone; a complete one is reused
#                                     as it is
#   scripts/cuda-toolkit.sh DIR       into DIR (the Dockerfile's /opt/cuda)
#
# The layout: the wheels' nvidia/cu13 tree (bin/nvcc, nvvm/bin/cicc,
# include/, lib/) with NCCL's include/ and lib/ merged in, plus what a
# toolkit installer would also make: lib64 -> lib, targets/x86_64-linux/
# {include,lib} (the paths nvcc.profile names) and the unversioned .so links
# the linker looks for (libcudart.so -> libcudart.so.13, ...). The wheels
# carry no libcuda.so (the driver's library, which comes from the host at run
# time); lib/stubs/libcuda.so is one made here, with every cu* symbol the
# cudarc bindings can call, so that a binary links without a driver (see
# make_libcuda_stub).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pins=$here/cuda-wheels.txt
# The directory is named by the pins and the layout's version: bump layout
# with any change to what this script makes.
layout=2
stamp=$(sha256sum "$pins" | cut -c1-12)-$layout
cache=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}/cuda
root=${1:-$cache/toolkit-$stamp}

if [ -f "$root/.complete" ] && [ "$(cat "$root/.complete")" = "$stamp" ]; then
  echo "$root"
  exit 0
fi

mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
# Another run may have finished it while this one waited.
if [ -f "$root/.complete" ] && [ "$(cat "$root/.complete")" = "$stamp" ]; then
  echo "$root"
  exit 0
fi

tmp=$(mktemp -d "$(dirname "$root")/.toolkit-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "cuda-toolkit: fetching the wheels in $(basename "$pins") from PyPI" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$pins" --dest "$tmp/wheels" >&2
echo "cuda-toolkit: unpacking into $root" >&2
for whl in "$tmp"/wheels/*.whl; do
  unzip -q -o "$whl" 'nvidia/*' -d "$tmp/unpacked"
done
new=$tmp/unpacked/nvidia/cu13
cp -a "$tmp/unpacked/nvidia/nccl/include/." "$new/include/"
cp -a "$tmp/unpacked/nvidia/nccl/lib/." "$new/lib/"
rm -rf "$new/.metadata"
ln -s lib "$new/lib64"
mkdir -p "$new/targets/x86_64-linux"
ln -s ../../include "$new/targets/x86_64-linux/include"
ln -s ../../lib "$new/targets/x86_64-linux/lib"
# The linker's names for the shared libraries: libX.so -> libX.so.N.
for so in "$new"/lib/lib*.so.*; do
  base=${so##*/}
  case $base in *.alt.so.* | *-builtins*) continue ;; esac
  link=$new/lib/${base%%.so.*}.so
  [ -e "$link" ] || ln -s "$base" "$link"
done
chmod -R a+rX "$new"

# make_libcuda_stub: a shared library named libcuda.so.1 that defines every
# driver API function (cu*) cuda.h declares, under each name it can take (the
# versioned cuMemAlloc_v2, the legacy cuMemAlloc, the per-thread-stream
# _ptds/_ptsz ones), plus the profiler's three (cudaProfiler.h is not in the
# wheels), each returning CUDA_ERROR_STUB_LIBRARY (34) as NVIDIA's own stub
# does. It exists only so that a binary links (cudarc links libcuda with
# `dynamic-linking`): the binary records libcuda.so.1, which the NVIDIA
# container runtime mounts from the host's driver. Never shipped in an image.
make_libcuda_stub() {
  local defs
  mkdir -p "$new/lib/stubs"
  {
    for defs in -U__CUDA_API_VERSION_INTERNAL -D__CUDA_API_VERSION_INTERNAL -DCUDA_API_PER_THREAD_DEFAULT_STREAM; do
      echo '#include <cuda.h>' | cc -E -P "$defs" -I "$new/include" -x c - | tr '\n' ' ' |
        grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | grep -oE 'cu[A-Za-z0-9_]+'
    done
    printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop
  } | sort -u | awk '{ printf "int %s(void) { return 34; }\n", $1 }' >"$tmp/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$new/lib/stubs/libcuda.so" "$tmp/libcuda_stub.c"
}
make_libcuda_stub

echo "$stamp" >"$new/.complete"
rm -rf "$root"
mv "$new" "$root"
echo "$root"
