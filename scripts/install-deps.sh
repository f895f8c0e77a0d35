#!/usr/bin/env bash
# Installs everything husk needs to build and test on Debian 12 (bookworm).
# Idempotent: a second run only checks.
set -euo pipefail

packages=(
    # guest kernel build (Debian's linux-source-6.12 + our config fragment)
    linux-source-6.12 make gcc flex bison bc libelf-dev libssl-dev xz-utils
    # the nested-KVM test host (QEMU TCG, Debian's cloud kernel via apt-get download)
    qemu-system-x86 kmod
    # guest and container tooling: busybox for test images, containerd, runc, CNI
    busybox-static containerd runc containernetworking-plugins
    # virtiofsd (built from crates.io) and the agent's seccomp support
    libseccomp-dev libcap-ng-dev pkg-config
    # ttrpc code generation
    protobuf-compiler
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "== apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v virtiofsd >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    echo "== cargo install virtiofsd"
    cargo install --locked virtiofsd
fi
echo "== dependencies ready"
