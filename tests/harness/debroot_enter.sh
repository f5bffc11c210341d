#!/bin/sh
# Enter a Debian root as PID 1 of fresh namespaces, writes thrown away.
#
# Started as:  unshare --fork --pid --mount --propagation private [--net] [--uts] \
#                  debroot_enter.sh ROOT MOUNTPOINT COMMAND [ARG...]
# (see debroot.py). ROOT is a cached root (never written); MOUNTPOINT an empty
# folder on the machine over which this namespace mounts a tmpfs holding an
# overlay of ROOT: everything written inside lands in that tmpfs and goes away
# with the namespace. /proc (this PID namespace's), /sys and /dev are mounted
# in, then COMMAND runs chrooted in the overlay, as PID 1 (exec).
set -eu

root=${1:?usage: $0 ROOT MOUNTPOINT COMMAND [ARG...]}
mnt=${2:?usage: $0 ROOT MOUNTPOINT COMMAND [ARG...]}
shift 2

if [ "$$" != 1 ]; then
    echo "$0: must run as PID 1 of a new PID namespace (under unshare --fork --pid)" >&2
    exit 1
fi
mount --make-rprivate /

mount -t tmpfs -o mode=0755 tmpfs "$mnt"
mkdir "$mnt/upper" "$mnt/work" "$mnt/root"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$mnt/upper,workdir=$mnt/work" "$mnt/root"
new=$mnt/root
mount -t proc proc "$new/proc"
mount --rbind /sys "$new/sys"
mount --rbind /dev "$new/dev"
# The systemd namespace's boot script (next to this one), for RootSystemd.
mkdir -p "$new/usr/local/lib/ovs-service-test"
cp "$(dirname "$0")/systemd_boot.sh" "$new/usr/local/lib/ovs-service-test/"
exec chroot "$new" "$@"
