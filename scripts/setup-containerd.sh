#!/usr/bin/env bash
# Idempotent set-up of what container identity needs on a fresh Debian
# machine: protoc to build the containerd gRPC bindings (containerd-client's
# build script runs it), and containerd, runc and a static busybox for the
# end-to-end harness in tests/e2e/support/containerd.rs. Safe to re-run.
#
# The harness starts its own private containerd; nothing here starts or
# configures the system one. On a systemd host the Debian package enables
# containerd.service, which the tests neither need nor touch.
set -euo pipefail

log() { printf '[setup-containerd] %s\n' "$*" >&2; }

need=()
for pkg in protobuf-compiler containerd runc busybox-static tar coreutils; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

for tool in protoc containerd containerd-shim-runc-v2 ctr runc busybox; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing $tool after install"; exit 1; }
done
log "containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), protoc $(protoc --version | awk '{print $2}') ready"
