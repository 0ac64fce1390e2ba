#!/usr/bin/env bash
# make image: builds ml_server/Dockerfile (the file CDK's DockerImageAsset builds) as $IMAGE.
# docker when a daemon answers; else podman (Debian's, vfs storage, chroot isolation, runc).
# Where the registry base cannot be pulled, a stand-in base is built first with debootstrap
# (Debian 12, python3 3.11 like python:3.11-slim) and passed as --build-arg BASE_IMAGE; the
# Dockerfile's default base is unchanged. See docs/boot.md, "Running it for real".
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/humansa-ml:local}
BASE=${BASE_IMAGE:-python:3.11-slim}
STANDIN=localhost/humansa-standin-base:bookworm
WORK=${HUMANSA_IMAGE_WORK:-.humansa/image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=(podman --storage-driver vfs --runtime runc)
mkdir -p "$WORK"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "image: $1 not found; $2" >&2
    exit 1
  }
}
size_of() { "$@" | awk '{ printf "%.0f MB\n", $1 / 1000000 }'; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  start=$SECONDS
  docker build -t "$IMAGE" ml_server
  echo "image: $IMAGE built with docker in $((SECONDS - start)) s, $(size_of docker image inspect -f '{{.Size}}' "$IMAGE")"
  exit 0
fi

need podman "install Debian's podman, buildah and runc (apt-get install podman buildah runc), or run a Docker daemon"
need runc "install Debian's runc (crun cannot run here: cgroups in hybrid mode)"
build_args=()
if ! "${PODMAN[@]}" image exists "$BASE" && ! "${PODMAN[@]}" pull -q "$BASE" >/dev/null 2>&1; then
  echo "image: $BASE cannot be pulled here: building on the stand-in base $STANDIN (debootstrap bookworm), a build argument only"
  if ! "${PODMAN[@]}" image exists "$STANDIN"; then
    need debootstrap "install Debian's debootstrap to build the stand-in base (apt-get install debootstrap)"
    start=$SECONDS
    rootfs="$WORK/standin-rootfs"
    rm -rf "$rootfs"
    mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -5 "$WORK/debootstrap.log" >&2; echo "image: debootstrap bookworm from $MIRROR failed (log: $WORK/debootstrap.log)" >&2; exit 1; }
    # What python:3.11-slim has and minbase lacks: `python` on PATH, pip allowed system-wide.
    ln -sf python3 "$rootfs/usr/bin/python"
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    # pip inside the build may reach PyPI through a proxy only this machine's CA bundle trusts.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
      cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import -q \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$STANDIN" >/dev/null
    echo "image: stand-in base built in $((SECONDS - start)) s, $(size_of "${PODMAN[@]}" image inspect -f '{{.Size}}' "$STANDIN")"
  fi
  build_args=(--build-arg "BASE_IMAGE=$STANDIN")
fi

start=$SECONDS
"${PODMAN[@]}" build --isolation chroot --network host --pull=never --format docker \
  "${build_args[@]}" -t "$IMAGE" -f ml_server/Dockerfile ml_server >"$WORK/build.log" 2>&1 \
  || { tail -20 "$WORK/build.log" >&2; echo "image: podman build failed (log: $WORK/build.log)" >&2; exit 1; }
echo "image: $IMAGE built with podman in $((SECONDS - start)) s, $(size_of "${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")"
