#!/usr/bin/env bash
# Idempotent set-up of what Egret needs on a fresh Debian machine of this
# kind: the build toolchain always, and with --tests also what the test
# suite uses. Safe to run repeatedly: each step checks first.
set -euo pipefail

WITH_TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done

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

# Build: LLVM 22 for bpf-linker, protoc for the containerd gRPC client.
apt_install llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev protobuf-compiler
if [ "$WITH_TESTS" -eq 1 ]; then
  # iproute2 for test network namespaces, bpftool to inspect attachments,
  # bpftrace and libbpf-tools (tcplife, the flow-accounting peer) as the
  # benchmark peers, prometheus/promtool for metrics tests,
  # prometheus-alertmanager (0.25) for the Alertmanager output's test (the
  # test starts its own on loopback; the package's service is not needed),
  # openssl to make the control API's test certificates, dnsmasq-base as
  # the DNS server of the observed-DNS tests (tests/kit/src/dns.rs).
  apt_install iproute2 bpftool bpftrace libbpf-tools prometheus prometheus-alertmanager openssl dnsmasq-base
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup component add rust-src --toolchain nightly"
  rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  log "cargo install bpf-linker 0.13.0 (LLVM 22); this takes a few minutes"
  PATH="/usr/lib/llvm-22/bin:$PATH" cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
fi
if [ "$WITH_TESTS" -eq 1 ]; then
  # containerd, runc and busybox-static for the identity tests.
  bash "$(dirname "$0")/setup-containerd.sh"
  # buildah, capsh/setpriv and kubernetes-validate for the deploy tests.
  bash "$(dirname "$0")/setup-deploy.sh"
  # qemu, Debian's 6.1 kernel and virtme-ng for `cargo xtask vm-test`.
  bash "$(dirname "$0")/setup-vm.sh"
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo install cargo-fuzz (the rule engine's fuzz pass)"
    cargo install cargo-fuzz --version 0.13.2 --locked
  fi
fi
log "ready"
