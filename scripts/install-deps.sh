#!/usr/bin/env bash
# Installs everything husk needs to build and test on Debian 12 (bookworm).
# Idempotent, and fast when all is there (one dpkg-query, one lookup): `cargo
# xtask demo` and `cargo xtask test` run it first, so on a fresh machine with
# Rust the README's two commands are the whole set-up. Installing packages
# needs root; checking does not.
set -euo pipefail

packages=(
    # guest kernel build (Debian's linux-source-6.12 + our config fragment)
    linux-source-6.12 make gcc flex bison bc libelf-dev libssl-dev xz-utils
    # the nested-KVM test host (QEMU TCG, Debian's cloud kernel via apt-get download)
    qemu-system-x86 kmod
    # guest and container tooling: busybox for test images, containerd, runc, CNI,
    # iptables (the CRI tests' image of a privileged container)
    busybox-static containerd runc containernetworking-plugins iptables
    # virtiofsd (built from crates.io) and the agent's seccomp support
    libseccomp-dev libcap-ng-dev pkg-config
    # ttrpc code generation
    protobuf-compiler
    # libFuzzer (C++) for the fuzz targets' brief CI run (fuzz/run.sh --ci)
    g++
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps: no dpkg-query: husk's set-up expects Debian 12; install the" \
        "equivalents of: ${packages[*]} (set HUSK_SKIP_INSTALL_DEPS=1 to make xtask skip this)" >&2
    exit 1
fi

# Packages dpkg does not know at all are missing too (dpkg-query omits them).
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null |
    awk '$NF == "installed" { print $1 }' || true)
missing=()
for p in "${packages[@]}"; do
    grep -qxF "$p" <<<"$installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if ((EUID != 0)); then
        echo "install-deps: missing Debian packages: ${missing[*]}" >&2
        echo "install-deps: installing them needs root: run 'sudo bash scripts/install-deps.sh' once" >&2
        exit 1
    fi
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
