# Sourced by scripts/images.sh: the base images the Dockerfiles name, made
# here from Debian's packages when the engine does not hold them and no
# registry can be reached (this machine reaches none).
#
#   gcr.io/distroless/cc-debian12:nonroot   what distroless builds it from:
#     Debian 12's libc6, libgcc-s1, libstdc++6, libgomp1, libssl3, netbase
#     and the ca-certificates bundle, /etc/passwd with root, nonroot (65532)
#     and nobody, /home/nonroot and /tmp; no shell, no package manager.
#
# The packages come from the mirror apt uses, at the versions it serves; the
# image is labelled as made here, so it is never mistaken for Google's.

# base_image_present NAME
base_image_present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

base_images_ensure() {
  local name=gcr.io/distroless/cc-debian12:nonroot
  base_image_present "$name" && return 0
  if "$DOCKER" pull --quiet "$name" >/dev/null 2>&1; then
    return 0
  fi
  echo "images: $name is not reachable; making it from Debian 12's packages" >&2
  local tmp
  tmp=$(mktemp -d)
  # apt-get download runs as _apt, which must be able to write here.
  chmod 755 "$tmp"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  (cd "$tmp" && apt-get download -qq libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 netbase ca-certificates >&2) || {
    apt-get update -qq >&2
    (cd "$tmp" && apt-get download -qq libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 netbase ca-certificates >&2)
  }
  local root=$tmp/root deb
  mkdir -p "$root"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # What update-ca-certificates would write: every Mozilla root, one bundle.
  mkdir -p "$root/etc/ssl/certs"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  # No documentation, no maintainer scripts' leftovers.
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale"
  cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
  cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
  mkdir -p "$root/home/nonroot" "$root/tmp" "$root/root"
  chmod 1777 "$root/tmp"
  chmod 700 "$root/root"
  chown 65532:65532 "$root/home/nonroot"
  echo 'PRETTY_NAME="Distroless-style image made by Backhaul from Debian GNU/Linux 12 (bookworm) packages"' >"$root/etc/os-release"
  tar --numeric-owner -C "$root" -c . |
    "$DOCKER" import \
      --change 'USER 65532:65532' \
      --change 'WORKDIR /home/nonroot' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change 'LABEL org.opencontainers.image.description="Stand-in for gcr.io/distroless/cc-debian12:nonroot, made offline by Backhaul scripts/base-images.sh from Debian 12 packages"' \
      - "$name" >&2
}
