#!/usr/bin/env bash
# Idempotent set-up of the Linux 6.1 guest that `cargo xtask vm-test` boots:
# qemu-system-x86 (software emulation: nested KVM is unavailable on these
# machines), Debian's generic 6.1 kernel (the LTS under Debian 12 and Amazon
# Linux 2023; the -cloud- flavour lacks 9p, which virtme-ng needs) and
# virtme-ng from PyPI, which boots that kernel on the host's own filesystem.
# Safe to re-run: each step checks first.
set -euo pipefail

log() { printf '[setup-vm] %s\n' "$*" >&2; }

# The kernel ABI tested; if Debian has dropped it from the archive, the
# newest 6.1 ABI available is taken instead (and said so).
KERNEL_ABI=6.1.0-57
VNG_VERSION=1.42

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

APT_UPDATED=0
apt_update() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
}

need=()
# A backported qemu-utils (as some machine images ship) conflicts with
# bookworm's qemu-system-x86 and apt removes it; installing bookworm's
# qemu-utils in the same step keeps qemu-img on the machine.
# Naming the suite (`qemu-utils/bookworm`) matters when the image's
# qemu-utils is a backport newer than any archive version: apt keeps the
# installed one as the candidate and then refuses the install as "held
# broken packages" (seen on 2026-12-02), so the pair is taken from one suite.
QEMU_SUITE=$( (. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}") )
if ! installed qemu-system-x86; then
  need+=(qemu-system-x86 "qemu-utils/${QEMU_SUITE}")
fi
if ! ls /boot/vmlinuz-6.1.0-*-amd64 >/dev/null 2>&1; then
  apt_update
  pkg="linux-image-${KERNEL_ABI}-amd64-unsigned"
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
      awk '{print $1}' | sort -V | tail -n 1)
    [ -n "$pkg" ] || { log "no linux-image-6.1.0-*-amd64-unsigned package available"; exit 1; }
    log "$KERNEL_ABI is no longer in the archive; using $pkg"
  fi
  need+=("$pkg")
fi
if [ ${#need[@]} -gt 0 ]; then
  apt_update
  log "apt-get install ${need[*]} (the kernel's initramfs step takes a minute)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${need[@]}" >/dev/null
fi

if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("virtme-ng"))' 2>/dev/null)" != "$VNG_VERSION" ]; then
  log "pip install virtme-ng==$VNG_VERSION"
  # Debian's own python refuses system-wide pip installs (PEP 668); a pyenv
  # python does not know the flag's meaning but accepts it.
  python3 -m pip install --quiet --disable-pip-version-check \
    --break-system-packages "virtme-ng==$VNG_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check "virtme-ng==$VNG_VERSION"
  # pyenv puts new console scripts on PATH through its shims.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi

for tool in qemu-system-x86_64 vng; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing $tool after install"; exit 1; }
done
kernel=$(ls /boot/vmlinuz-6.1.0-*-amd64 | sort -V | tail -n 1)
grep -q '^CONFIG_9P_FS=' "/boot/config-${kernel#/boot/vmlinuz-}" ||
  { log "$kernel has no 9p support (a -cloud- kernel?)"; exit 1; }
log "$(vng --version), $(qemu-system-x86_64 --version | head -n 1), $kernel ready"
