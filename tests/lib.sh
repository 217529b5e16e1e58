# Shell helpers shared by tests/run and qemu/up. Source it; it defines functions only.

say() { printf '\n==> %s\n' "$*"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: $1 needs root (network namespaces, TUN devices, packages); run as root" >&2
        exit 1
    fi
}

# apt_install PKG...: install the Debian packages that are missing, without recommends. An
# install can remove a package asked for (a fresh machine may carry qemu-utils from backports,
# which Debian 12's qemu-system-x86 makes apt remove), so the list is checked again afterwards,
# what went missing is installed in a second round, and anything still missing is an error.
apt_missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

apt_install() {
    local missing round
    for round in 1 2; do
        mapfile -t missing < <(apt_missing "$@")
        [ ${#missing[@]} -eq 0 ] && return 0
        need_root "installing ${missing[*]}"
        say "apt-get install ${missing[*]}"
        [ "$round" -eq 2 ] || apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    done
    mapfile -t missing < <(apt_missing "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "$0: apt-get left these packages uninstalled: ${missing[*]}" >&2
    exit 1
}

need_cargo() {
    command -v cargo >/dev/null || { echo "$0: cargo not found; install Rust with rustup (stable)" >&2; exit 1; }
}

# Packages the lab (namespace mode) uses at run time.
LAB_PACKAGES=(iproute2 iputils-ping nftables procps util-linux)
# And what VM mode adds: QEMU, and apt-get download + dpkg-deb for the image's kernel package.
VM_PACKAGES=(qemu-system-x86 qemu-utils dpkg-dev apt)
