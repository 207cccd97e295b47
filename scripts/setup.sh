#!/usr/bin/env bash
# Idempotent set-up of everything Egret's build and tests need on a fresh
# Debian machine of this kind. Safe to run repeatedly: each step checks first.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build: LLVM 22 for bpf-linker, protoc for the containerd gRPC client;
# runtime/test tools: iproute2 for netns,
# bpftool to inspect attachments, python3 for the io_uring/socket test helpers.
apt_install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
  iproute2 bpftool protobuf-compiler bpftrace prometheus

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  log "cargo install bpf-linker 0.13.0 (LLVM 22); this takes a few minutes"
  PATH="/usr/lib/llvm-22/bin:$PATH" cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
fi
# Test-only: containerd, runc and busybox-static for the identity tests.
bash "$(dirname "$0")/setup-containerd.sh"
log "toolchain ready"
