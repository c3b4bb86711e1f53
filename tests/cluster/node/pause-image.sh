#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image from pause.c beside this script and
# writes it as a `docker save` archive, which `ctr images import` takes. No
# registry is reachable here, so the kubelet's sandboxes use this one. The
# image holds one static binary; the build is cached by the source's hash.
#
# Usage: pause-image.sh IMAGE-NAME OUT.tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=$1
out=$2
cache=${BACKHAUL_CACHE:-$HOME/.cache/backhaul}/images/pause
hash=$(cat "$here/pause.c" | sha256sum | cut -c1-16)
binary=$cache/pause-$hash
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  gcc -static -O2 -Wall -Wextra -Werror -o "$binary.tmp" "$here/pause.c"
  strip "$binary.tmp"
  mv "$binary.tmp" "$binary"
fi
python3 - "$binary" "$name" "$out" <<'PY'
import hashlib, io, json, sys, tarfile

binary, name, out = sys.argv[1:]

def tar_bytes(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    return buf.getvalue()

def add_layer(t):
    info = t.gettarinfo(binary, arcname="pause")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755
    with open(binary, "rb") as f:
        t.addfile(info, f)

layer = tar_bytes(add_layer)
layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    "history": [{"created_by": "tests/cluster/node/pause-image.sh"}],
}, sort_keys=True).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()

def add_archive(t):
    for path, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
        info = tarfile.TarInfo(path)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))

with open(out, "wb") as f:
    f.write(tar_bytes(add_archive))
PY
