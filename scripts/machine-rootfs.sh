#!/usr/bin/env bash
# make instance-test: the Debian 12 root filesystem systemd-nspawn boots as the "instance"
# (systemd as PID 1). It reuses the stand-in base's debootstrap tree when `make image` left one,
# else runs debootstrap itself, then adds systemd, dbus and curl. Prints where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${HUMANSA_IMAGE_WORK:-.humansa/image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS="$WORK/machine-rootfs"
PACKAGES=(systemd systemd-sysv dbus curl python3 ca-certificates)
if [ -f "$ROOTFS/.humansa-ready" ]; then
  echo "$ROOTFS"
  exit 0
fi
for tool in systemd-nspawn debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "machine: $tool not found; install Debian's systemd-container and debootstrap" >&2
    exit 1
  }
done
start=$SECONDS
rm -rf "$ROOTFS"
mkdir -p "$WORK"
if [ -d "$WORK/standin-rootfs/usr/bin" ]; then
  cp -a "$WORK/standin-rootfs" "$ROOTFS"
else
  debootstrap --variant=minbase "--include=$(IFS=,; echo "${PACKAGES[*]}")" bookworm "$ROOTFS" "$MIRROR" \
    >"$WORK/machine-debootstrap.log" 2>&1 \
    || { tail -5 "$WORK/machine-debootstrap.log" >&2; echo "machine: debootstrap bookworm from $MIRROR failed" >&2; exit 1; }
fi
# Not booted: nspawn only provides /proc, /dev and the network for apt.
systemd-nspawn -q --register=no --keep-unit --pipe -D "$ROOTFS" /bin/sh -c \
  "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${PACKAGES[*]} >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*" \
  >"$WORK/machine-apt.log" 2>&1 \
  || { tail -5 "$WORK/machine-apt.log" >&2; echo "machine: apt-get install ${PACKAGES[*]} in the machine failed (log: $WORK/machine-apt.log)" >&2; exit 1; }
touch "$ROOTFS/.humansa-ready"
echo "machine: $ROOTFS ready in $((SECONDS - start)) s" >&2
echo "$ROOTFS"
