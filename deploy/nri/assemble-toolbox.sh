#!/bin/sh
# assemble-toolbox.sh OUT BUILD: assemble the relocatable toolbox in OUT.
#
# The same toolbox as hack/setup.sh's toolbox() step, for the image
# (deploy/nri/Dockerfile): CRIU 4.2 from Debian sid with the closure of the
# libraries it links, glibc and its ld.so included, flattened into OUT/lib
# and run as `OUT/lib/ld-linux-x86-64.so.2 --library-path OUT/lib OUT/bin/criu`,
# so it works inside any container whatever its libc; the static keeper and
# helper from BUILD (`make build`) and the prlimit64 shim preloaded into CRIU
# (init/zeropod-rlimits.c); an empty OUT/state, the mount point of a
# container's state directory under /.zeropod.
#
# Needs Debian sid in apt's sources (the Dockerfile adds it at priority 100,
# as hack/setup.sh does) and an up-to-date package list.
set -eu

OUT=${1:?usage: assemble-toolbox.sh OUT BUILD}
BUILD=${2:?usage: assemble-toolbox.sh OUT BUILD}

die() { printf 'assemble-toolbox: error: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# CRIU and the packages of the libraries it needs, resolved by apt in sid.
# gcc-N-base and libc-gconv-modules-extra hold no library CRIU loads.
pkgs=$(apt-cache depends -o APT::Default-Release=sid --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu libcompel1 2>/dev/null \
    | grep -v '^ ' | grep -vE '^(gcc-[0-9]+-base|libc-gconv-modules-extra)$' | sort -u | tr '\n' ' ')
[ -n "$pkgs" ] || die "apt-cache cannot resolve criu's dependencies (is sid in the apt sources?)"

mkdir -p "$work/debs" "$work/root"
# shellcheck disable=SC2086
(cd "$work/debs" && apt-get download -qq -o APT::Sandbox::User=root -t sid $pkgs >/dev/null) \
    || die "apt-get download -t sid $pkgs failed"
for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$work/root"; done

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/state"
cp -a "$work/root/usr/sbin/criu" "$OUT/bin/criu"
# Every shared library, flattened into lib/ with its symlinks (libfoo.so.1 ->
# libfoo.so.1.2 stay relative and in the same directory).
for so in "$work"/root/lib/x86_64-linux-gnu/*.so* "$work"/root/usr/lib/x86_64-linux-gnu/*.so*; do
    if [ -e "$so" ]; then cp -a "$so" "$OUT/lib/"; fi
done
[ -e "$OUT/lib/ld-linux-x86-64.so.2" ] || die "no ld-linux-x86-64.so.2 in the unpacked libc6"
cp "$BUILD/zeropod-init" "$BUILD/zeropod-criu" "$OUT/bin/"
cp "$BUILD/libzeropod-rlimits.so" "$OUT/lib/"

"$OUT/lib/ld-linux-x86-64.so.2" --library-path "$OUT/lib" "$OUT/bin/criu" --version | head -n 1 >"$OUT/VERSION"
case $(sed -n 's/^Version: *//p' "$OUT/VERSION") in
    4.[2-9]* | 4.[1-9][0-9]* | [5-9].*) ;;
    *) die "CRIU in the toolbox is '$(cat "$OUT/VERSION")', nri-zeropod needs >= 4.2" ;;
esac
printf 'assemble-toolbox: %s: %s\n' "$OUT" "$(cat "$OUT/VERSION")" >&2
