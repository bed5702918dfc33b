#!/bin/sh
# nri-zeropod-install-toolbox: put the image's toolbox on the host, atomically.
#
# Runs as the DaemonSet's init container, with the host's /opt/nri-zeropod
# mounted at the same path and the host's pids in /proc (hostPID).
#
#   $NRI_ZEROPOD_HOST_OPT/                  (default /opt/nri-zeropod)
#     toolbox -> toolboxes/<name>           the path the agent and containerd use
#     toolboxes/criu-4.2.1-0123456789abcdef/  one directory per toolbox content
#
# <name> is CRIU's version and a hash of the toolbox's content, so the same
# toolbox is installed once however often the pod restarts. A new one is
# copied to toolboxes/<name>.new, renamed to toolboxes/<name>, and the
# toolbox symlink is replaced with one rename(2): containerd resolves it when
# it starts a container, so a container gets either the old toolbox or the
# new one, complete. Running containers keep the directory they were started
# with bind-mounted at /.zeropod; a toolbox directory is deleted only when no
# process on the node has it mounted any more (checked in /proc/*/mountinfo).
#
# A real directory at toolbox (hack/setup.sh's layout) is moved to
# toolboxes/legacy-<time> first and is deleted by the same rule.
set -eu

SRC=${NRI_ZEROPOD_TOOLBOX_SRC:-/opt/nri-zeropod-image/toolbox}
DEST=${NRI_ZEROPOD_HOST_OPT:-/opt/nri-zeropod}
PROC=${NRI_ZEROPOD_PROC:-/proc}

log() { printf 'install-toolbox: %s\n' "$*" >&2; }
die() { printf 'install-toolbox: error: %s\n' "$*" >&2; exit 1; }

for need in bin/criu bin/zeropod-init bin/zeropod-criu lib/ld-linux-x86-64.so.2 state VERSION; do
    [ -e "$SRC/$need" ] || die "$SRC is not a toolbox: it lacks $need"
done
version=$(sed -n 's/^Version: *//p' "$SRC/VERSION")
[ -n "$version" ] || die "cannot read CRIU's version from $SRC/VERSION"
# The hash covers names, modes, link targets and contents, not times or owners.
hash=$(cd "$SRC" && tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf - . | sha256sum | cut -c1-16)
name="criu-$version-$hash"

mkdir -p "$DEST/toolboxes"

if [ -d "$DEST/toolboxes/$name" ]; then
    log "toolbox $name is already installed"
else
    log "installing toolbox $name"
    rm -rf "$DEST/toolboxes/$name.new"
    cp -a "$SRC" "$DEST/toolboxes/$name.new"
    sync "$DEST/toolboxes/$name.new" 2>/dev/null || sync
    mv -T "$DEST/toolboxes/$name.new" "$DEST/toolboxes/$name"
fi

if [ -d "$DEST/toolbox" ] && [ ! -L "$DEST/toolbox" ]; then
    legacy="legacy-$(date +%s)"
    log "moving the toolbox directory at $DEST/toolbox to toolboxes/$legacy"
    mv -T "$DEST/toolbox" "$DEST/toolboxes/$legacy"
fi

if [ "$(readlink "$DEST/toolbox" 2>/dev/null || true)" != "toolboxes/$name" ]; then
    # A relative target: the link resolves the same on the host and in the
    # agent's container, which mounts /opt/nri-zeropod at the same path.
    rm -rf "$DEST/toolbox.new"
    ln -s "toolboxes/$name" "$DEST/toolbox.new"
    mv -T "$DEST/toolbox.new" "$DEST/toolbox"
    log "$DEST/toolbox -> toolboxes/$name"
fi

# mounted NAME: true if some process has toolboxes/NAME mounted. Field 4 of
# mountinfo is the mount's root within its filesystem and follows renames, so
# it ends with /toolboxes/NAME whatever filesystem /opt is on. Unreadable
# entries (processes that just exited) are skipped.
mounted() {
    grep -Fqs -- "/toolboxes/$1 " "$PROC"/[0-9]*/mountinfo
}

for dir in "$DEST"/toolboxes/*; do
    [ -e "$dir" ] || continue
    old=${dir##*/}
    [ "$old" = "$name" ] && continue
    case $old in
        *.new) rm -rf "$dir"; continue ;;  # an interrupted copy
    esac
    if mounted "$old"; then
        log "keeping toolbox $old: running containers use it"
    else
        log "removing toolbox $old: no container uses it"
        rm -rf "$dir"
    fi
done
