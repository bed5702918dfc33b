#!/usr/bin/env bash
# hack/setup.sh: install everything nri-zeropod's demo and tests need, idempotently.
#
# Run as root on Debian 12 (bookworm) or newer. Nothing is installed by hand and
# no system library is upgraded:
#   - build tools (gcc, musl-gcc, clang-14, libbpf-dev) come from bookworm with apt-get;
#   - containerd 2.1 and the CNI plugins (sid), runc (bookworm), catatonit and
#     busybox-static (sid) are downloaded with `apt-get download` and unpacked
#     with `dpkg -x` under $OPT/root;
#   - CRIU >= 4.2 (sid) and the libraries it needs, glibc included, are unpacked
#     into a relocatable toolbox ($OPT/toolbox: bin/, lib/) run through its own ld.so;
#   - a Python virtualenv (.venv) with the project in editable mode and its test extra;
#   - the keeper and the eBPF program (make build), then the local OCI images.
# Each step records a stamp of its inputs; a second run with nothing to do takes seconds.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OPT=${NRI_ZEROPOD_OPT:-/opt/nri-zeropod}
DEBS=$OPT/debs
STAMPS=$OPT/stamps

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Packages unpacked under $OPT/root for the local node, by suite.
HOST_SID=(containerd containernetworking-plugins catatonit busybox-static)
HOST_TRIXIE=(kustomize)  # only to check deploy/nri renders as kustomize renders it
HOST_BOOKWORM=(runc)
# System packages from bookworm (no newer libc is ever pulled in).
SYSTEM_PKGS=(gcc make libc6-dev musl-tools clang-14 libbpf-dev libbpf1 iproute2 util-linux mount curl wrk kmod openssl)

preflight() {
    [ "$(id -u)" = 0 ] || die "run as root (setup installs packages and the node needs root)"
    [ -r /etc/os-release ] || die "cannot read /etc/os-release"
    # shellcheck disable=SC1091
    . /etc/os-release
    [ "${ID:-}" = debian ] || [ "${ID_LIKE:-}" = debian ] || die "needs Debian 12 or newer (found ${PRETTY_NAME:-unknown})"
    [ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported so far (found $(uname -m))"
    mkdir -p "$OPT" "$DEBS" "$STAMPS"
}

stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$STAMPS/$1"; }

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

apt_sources() {
    # trixie and sid at priority 100: available with -t, never chosen by default.
    local src=/etc/apt/sources.list.d/nri-zeropod-sid.sources pin=/etc/apt/preferences.d/nri-zeropod
    if [ ! -f "$src" ]; then
        log "adding Debian trixie and sid to apt sources (pinned at priority 100)"
        cat >"$src" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        APT_UPDATED=0
    fi
    if [ ! -f "$pin" ]; then
        cat >"$pin" <<'EOF'
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 100
EOF
    fi
    if ! apt-cache policy 2>/dev/null | grep -q 'n=sid'; then
        apt_update_once
    fi
}

system_packages() {
    local missing=() p
    for p in "${SYSTEM_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        apt_update_once
        log "installing from bookworm: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# deb_file PKG: the downloaded .deb of PKG, if any.
deb_file() { compgen -G "$DEBS/${1}_*.deb" | head -n 1 || true; }

# download SUITE PKG...: fetch the .debs that are not in $DEBS yet.
download() {
    local suite=$1; shift
    local need=() p
    for p in "$@"; do [ -n "$(deb_file "$p")" ] || need+=("$p"); done
    [ ${#need[@]} -gt 0 ] || return 0
    apt_update_once
    log "downloading from $suite: ${need[*]}"
    (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root -t "$suite" "${need[@]}" >/dev/null) || die "apt-get download -t $suite ${need[*]} failed"
}

# The stamp key of a set of .deb files: their names, which carry the versions.
debs_key() {
    printf '%s\n' "$@" | xargs -n1 basename | sort | tr '\n' ' '
}

# The toolbox's CRIU, run through the toolbox's own ld.so: tb_criu TOOLBOX ARGS...
tb_criu() {
    local tb=$1
    shift
    "$tb/lib/ld-linux-x86-64.so.2" --library-path "$tb/lib" --preload "$tb/lib/libzeropod-rlimits.so" \
        "$tb/bin/criu" "$@"
}

host_root() {
    local pkg files=()
    download sid "${HOST_SID[@]}"
    download trixie "${HOST_TRIXIE[@]}"
    download bookworm "${HOST_BOOKWORM[@]}"
    for pkg in "${HOST_SID[@]}" "${HOST_TRIXIE[@]}" "${HOST_BOOKWORM[@]}"; do files+=("$(deb_file "$pkg")"); done
    local key
    key=$(debs_key "${files[@]}")
    stamp_ok root "$key" && [ -x "$OPT/root/usr/bin/containerd" ] && return 0
    log "unpacking containerd, runc, CNI plugins, catatonit, busybox and kustomize into $OPT/root"
    rm -rf "$OPT/root.new" && mkdir -p "$OPT/root.new"
    for f in "${files[@]}"; do dpkg -x "$f" "$OPT/root.new"; done
    rm -rf "$OPT/root" && mv "$OPT/root.new" "$OPT/root"
    "$OPT/root/usr/bin/containerd" --version >/dev/null || die "the unpacked containerd does not run"
    "$OPT/root/usr/sbin/runc" --version >/dev/null || die "the unpacked runc does not run"
    stamp_set root "$key"
}

toolbox() {
    # CRIU 4.2 from sid and the closure of the libraries it links, resolved by apt.
    local pkgs
    pkgs=$(apt-cache depends -o APT::Default-Release=sid --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances criu libcompel1 2>/dev/null \
        | grep -v '^ ' | grep -vE '^(gcc-[0-9]+-base|libc-gconv-modules-extra)$' | sort -u | tr '\n' ' ')
    [ -n "$pkgs" ] || die "apt-cache cannot resolve criu's dependencies (is sid in the apt sources?)"
    # shellcheck disable=SC2086
    download sid $pkgs
    local files=() p
    for p in $pkgs; do files+=("$(deb_file "$p")"); done
    local key
    key="$(debs_key "${files[@]}") $(cat "$REPO/build/zeropod-init" "$REPO/build/zeropod-criu" \
        "$REPO/build/libzeropod-rlimits.so" | sha256sum | cut -c1-16)"
    stamp_ok toolbox "$key" && [ -x "$OPT/toolbox/bin/criu" ] && return 0
    log "assembling the CRIU toolbox in $OPT/toolbox"
    local tmp=$OPT/toolbox.tmp new=$OPT/toolbox.new
    rm -rf "$tmp" "$new" && mkdir -p "$tmp" "$new/bin" "$new/lib" "$new/state"
    for f in "${files[@]}"; do dpkg -x "$f" "$tmp"; done
    cp -a "$tmp/usr/sbin/criu" "$new/bin/criu"
    # Flatten every shared library into lib/ (symlinks kept), ld.so included.
    # Same-directory symlinks (libfoo.so.1 -> libfoo.so.1.2) are kept as they are.
    local so
    for so in "$tmp"/lib/x86_64-linux-gnu/*.so* "$tmp"/usr/lib/x86_64-linux-gnu/*.so*; do
        [ -e "$so" ] && cp -a "$so" "$new/lib/"
    done
    [ -e "$new/lib/ld-linux-x86-64.so.2" ] || die "toolbox: no ld-linux-x86-64.so.2 in the unpacked libc6"
    cp "$REPO/build/zeropod-init" "$REPO/build/zeropod-criu" "$new/bin/"
    cp "$REPO/build/libzeropod-rlimits.so" "$new/lib/"
    tb_criu "$new" --version | head -n 1 >"$new/VERSION"
    rm -rf "$tmp" "$OPT/toolbox" && mv "$new" "$OPT/toolbox"
    stamp_set toolbox "$key"
}

check_toolbox() {
    local tb=$OPT/toolbox ver
    ver=$(tb_criu "$tb" --version | sed -n 's/^Version: *//p')
    case "$ver" in
        4.[2-9]* | 4.[1-9][0-9]* | [5-9].*) ;;
        *) die "toolbox CRIU is '$ver', need >= 4.2" ;;
    esac
    stamp_ok criu-check "$ver $(uname -r)" && return 0
    tb_criu "$tb" check >/dev/null 2>"$OPT/criu-check.log" \
        || die "criu check failed through the toolbox (see $OPT/criu-check.log)"
    stamp_set criu-check "$ver $(uname -r)"
}

venv() {
    local key stamp
    key=$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)
    stamp="venv-$(echo "$REPO" | md5sum | cut -c1-8)" # one per checkout
    if [ -x "$REPO/.venv/bin/python" ] && stamp_ok "$stamp" "$key"; then return 0; fi
    log "creating the Python virtualenv in $REPO/.venv"
    local py=${PYTHON:-python3}
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "needs Python >= 3.11 ($py is older)"
    [ -x "$REPO/.venv/bin/python" ] || "$py" -m venv "$REPO/.venv" || die "python3 -m venv failed"
    "$REPO/.venv/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    "$REPO/.venv/bin/python" -c 'import nri_zeropod, grpc, google.protobuf, pytest' || die "the virtualenv is incomplete"
    stamp_set "$stamp" "$key"
}

build() {
    make -s -C "$REPO" build || die "make build failed"
}

images() {
    local pkgs
    pkgs=$("$REPO/.venv/bin/python" -m nri_zeropod.images debs) || die "cannot list the image packages"
    local line suite rest
    while read -r suite rest; do
        [ -n "$suite" ] || continue
        # shellcheck disable=SC2086
        download "$suite" $rest
    done <<<"$pkgs"
    NRI_ZEROPOD_OPT=$OPT "$REPO/.venv/bin/python" -m nri_zeropod.images build --debs "$DEBS" || die "building the images failed"
}

main() {
    preflight
    apt_sources
    system_packages
    host_root
    venv
    build
    toolbox
    check_toolbox
    images
    log "ready: $OPT (toolbox: $(cat "$OPT/toolbox/VERSION"))"
}

main "$@"
