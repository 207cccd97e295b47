#!/usr/bin/env bash
# Idempotent set-up of what the deployment work needs on a fresh Debian
# machine: buildah for `cargo xtask image`, capsh/setpriv to run the agent
# under the DaemonSet's capability set, and the Python `kubernetes-validate`
# package that checks deploy/kubernetes against the Kubernetes schemas.
# Safe to re-run: each step checks first. Nothing global is configured:
# `cargo xtask image` keeps its own buildah storage under target/.
set -euo pipefail

log() { printf '[setup-deploy] %s\n' "$*" >&2; }

need=()
# buildah: image builds from scratch; libcap2-bin: capsh; util-linux: setpriv;
# python3-pip only if the python3 on PATH has no pip (pyenv pythons do).
for pkg in buildah libcap2-bin util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ! python3 -m pip --version >/dev/null 2>&1; then
  dpkg-query -W -f='${Status}' python3-pip 2>/dev/null | grep -q 'install ok installed' || need+=(python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The schemas ship inside the package (one directory per Kubernetes minor).
KV_VERSION=1.37.0
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1 ||
  [ "$(python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KV_VERSION" ]; then
  log "pip install kubernetes-validate==$KV_VERSION"
  # Debian's own python refuses system-wide pip installs (PEP 668); a pyenv
  # python does not know the flag's meaning but accepts it.
  python3 -m pip install --quiet --disable-pip-version-check \
    --break-system-packages "kubernetes-validate==$KV_VERSION" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

for tool in buildah capsh setpriv; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing $tool after install"; exit 1; }
done
python3 -c 'import kubernetes_validate' || { log "kubernetes_validate not importable"; exit 1; }
log "buildah $(buildah --version | awk '{print $3}'), kubernetes-validate $KV_VERSION ready"
