#!/bin/sh
# Boot systemd as PID 1 of a fresh PID + mount namespace, for tests.
#
# Started as:  unshare --fork --pid --mount --mount-proc --propagation private \
#                  --uts [--net] systemd_boot.sh CGROUP_NAME [SOURCE]
# (see systemd_ns.py), with stdout a pseudo-terminal the test side reads.
#
# The namespace shares the machine's file systems, so everything systemd
# could write at boot must land on private mounts, and only a minimal target
# may be started: booting the machine's default target here runs
# systemd-tmpfiles --boot (which empties the real /tmp) and starts unrelated
# services. Besides /run, /tmp and /var/tmp, three shared things need care:
# /dev/console (the machine's), /sys/fs/cgroup (a tmpfs that systemd remounts
# read-only, for everyone, when it is shared) and /proc/sys (sysctls systemd
# raises at boot).
#
# CGROUP_NAME: a fresh child cgroup this script moves into before exec'ing
# systemd, so that this systemd manages its own subtree and never the
# machine's root cgroup (which another instance may be using at the same time).
#
# SOURCE: a checkout of ovs-service that must be visible inside at its own
# path, even where that path is hidden by the private mounts below (a clone
# under /tmp, say).
set -eu

TARGET=ovs-service-test.target
cgroup_name=${1:?usage: $0 CGROUP_NAME [SOURCE]}
source=${2:-}

if [ "$$" != 1 ]; then
    echo "$0: must run as PID 1 of a new PID namespace (under unshare --fork --pid)" >&2
    exit 1
fi

# unshare --propagation private already did this; a second time is cheap and
# guarantees no mount below leaks to the machine.
mount --make-rprivate /

# systemd as PID 1 writes to /dev/console, which here is the machine's. Give
# it the terminal this script was started on (a pseudo-terminal the test
# reads), or nothing.
if [ -t 1 ]; then
    mount --bind /proc/1/fd/1 /dev/console
else
    mount --bind /dev/null /dev/console
fi

# /proc/sys is the machine's (bar the network part, with --net): systemd as
# PID 1 raises fs.file-max and others at boot. Read-only until it has booted;
# the test side unmounts this once the system is up.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys

# The checkout, held at a place of our own before the private mounts may
# hide it; put back at its own path once they are in place (see below).
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
if [ -n "$source" ]; then
    mkdir -p /run/ovs-service-test/source
    mount --bind "$source" /run/ovs-service-test/source
fi

# Private, empty folders: systemd's and the test's scratch space, the Open
# vSwitch database, logs and runtime folder, ovs-service's snapshots, and
# the state systemd keeps under /var (timer stamps, journal).
for dir in /tmp /var/tmp \
        /etc/openvswitch /var/lib/openvswitch /var/log/openvswitch \
        /var/lib/ovs-service /var/lib/systemd /var/log/journal; do
    [ -d "$dir" ] || mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$dir"
done
chmod 1777 /tmp /var/tmp
# node_exporter's textfile folder, where ovs-service writes its metrics: the
# namespace's own, where the machine has one (none is made for it).
metrics=/var/lib/prometheus/node-exporter
[ ! -d "$metrics" ] || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$metrics"
if [ -n "$source" ] && [ ! -e "$source/pyproject.toml" ]; then
    mkdir -p "$source"
    mount --bind /run/ovs-service-test/source "$source"
fi
mkdir -p /run/lock /run/systemd/system /run/systemd/system-generators \
    /run/systemd/system.conf.d /run/systemd/journald.conf.d
chmod 1777 /run/lock

# The only target this systemd starts: the bus and the journal.
cat >/run/systemd/system/$TARGET <<EOF
[Unit]
Description=ovs-service test namespace
Requires=dbus.socket dbus.service systemd-journald.socket systemd-journald.service
After=dbus.socket dbus.service systemd-journald.socket systemd-journald.service
AllowIsolate=yes
EOF

# Keep every cgroup controller out of it: this systemd only tracks processes
# (in its own subtree, see below) and never configures the machine's
# controller hierarchies.
cat >/run/systemd/system.conf.d/ovs-service-test.conf <<EOF
[Manager]
DefaultCPUAccounting=no
DefaultIOAccounting=no
DefaultBlockIOAccounting=no
DefaultMemoryAccounting=no
DefaultTasksAccounting=no
DefaultIPAccounting=no
EOF

# The journal stays in the private /run and leaves the machine's kernel log
# alone.
cat >/run/systemd/journald.conf.d/ovs-service-test.conf <<EOF
[Journal]
Storage=volatile
ReadKMsg=no
EOF

mask() {
    for unit in "$@"; do
        ln -sfn /dev/null "/run/systemd/system/$unit"
    done
}

# Units that must never run here (see the documented danger above), ...
mask systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
    systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer \
    systemd-remount-fs.service systemd-sysctl.service \
    systemd-modules-load.service systemd-binfmt.service \
    systemd-logind.service getty.target console-getty.service \
    systemd-random-seed.service systemd-sysusers.service \
    systemd-firstboot.service systemd-machine-id-commit.service \
    systemd-journal-flush.service systemd-journald-audit.socket \
    systemd-update-utmp.service systemd-update-utmp-runlevel.service \
    systemd-timesyncd.service systemd-pstore.service \
    systemd-udevd.service systemd-udevd-control.socket \
    systemd-udevd-kernel.socket systemd-udev-trigger.service \
    systemd-udev-settle.service systemd-hwdb-update.service \
    systemd-networkd.service systemd-resolved.service \
    local-fs.target remote-fs.target swap.target \
    cryptsetup.target veritysetup.target integritysetup.target \
    timers.target paths.target multi-user.target graphical.target \
    kmod-static-nodes.service proc-sys-fs-binfmt_misc.automount \
    emergency.target rescue.target

# ... and everything the machine has enabled or that a target pulls
# statically, except the bus, the journal and Open vSwitch's own units.
for link in /etc/systemd/system/*.wants/* /etc/systemd/system/*.requires/* \
        /lib/systemd/system/*.wants/* /lib/systemd/system/*.requires/* \
        /usr/local/lib/systemd/system/*.wants/* \
        /usr/local/lib/systemd/system/*.requires/*; do
    [ -e "$link" ] || [ -L "$link" ] || continue
    unit=${link##*/}
    case $unit in
        dbus.socket|dbus.service) ;;
        systemd-journald.service|systemd-journald.socket) ;;
        systemd-journald-dev-log.socket) ;;
        openvswitch.service|openvswitch-switch.service|ovs-*.service|ovsdb-*.service) ;;
        *) mask "$unit" ;;
    esac
done

# Drop-ins the machine has for Open vSwitch's units (ovs-service's package
# installs some) would change the units each test installs: mask them by
# name. A test that wants drop-ins installs its own over the mask.
for conf in /etc/systemd/system/*.service.d/*.conf /lib/systemd/system/*.service.d/*.conf \
        /usr/lib/systemd/system/*.service.d/*.conf; do
    [ -e "$conf" ] || continue
    dir=${conf%/*}
    case ${dir##*/} in
        openvswitch*.service.d|ovs-*.service.d|ovsdb-*.service.d)
            mkdir -p "/run/systemd/system/${dir##*/}"
            ln -sfn /dev/null "/run/systemd/system/${dir##*/}/${conf##*/}" ;;
    esac
done

# No generators: they would turn /etc/fstab, /etc/init.d, gettys and GPT
# partitions into units.
for dir in /lib/systemd/system-generators /usr/lib/systemd/system-generators \
        /usr/local/lib/systemd/system-generators /etc/systemd/system-generators; do
    [ -d "$dir" ] || continue
    for gen in "$dir"/*; do
        [ -e "$gen" ] || continue
        ln -sfn /dev/null "/run/systemd/system-generators/${gen##*/}"
    done
done

# /sys/fs/cgroup is a tmpfs holding the machine's cgroup mounts; systemd
# creates symlinks there at boot. Give it a private tmpfs with the same
# mounts (the hierarchies themselves stay the machine's).
if [ "$(stat -f -c %T /sys/fs/cgroup)" = tmpfs ]; then
    stash=/run/ovs-service-test/cgroup-stash
    mkdir -p "$stash"
    mount --rbind /sys/fs/cgroup "$stash"
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
    for entry in "$stash"/*; do
        name=${entry##*/}
        if [ -L "$entry" ]; then
            ln -s "$(readlink "$entry")" "/sys/fs/cgroup/$name"
        elif [ -d "$entry" ]; then
            mkdir "/sys/fs/cgroup/$name"
            mount --rbind "$entry" "/sys/fs/cgroup/$name"
        fi
    done
    umount -l "$stash"
    rmdir "$stash"
fi

# Move into a private child cgroup in the hierarchy systemd tracks processes
# with (and, on a hybrid layout, the unified one next to it). systemd takes
# the cgroup it starts in as its root.
base=$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)
if [ -n "$base" ] && [ -d /sys/fs/cgroup/systemd ]; then
    hierarchies="/sys/fs/cgroup/systemd"
    [ -f /sys/fs/cgroup/unified/cgroup.procs ] && hierarchies="$hierarchies /sys/fs/cgroup/unified"
else
    base=$(sed -n 's/^0:://p' /proc/self/cgroup)
    hierarchies="/sys/fs/cgroup"
fi
base=${base%/}
for h in $hierarchies; do
    mkdir -p "$h$base/$cgroup_name"
    echo $$ >"$h$base/$cgroup_name/cgroup.procs"
done

exec env container=other /lib/systemd/systemd --system --unit="$TARGET" \
    --log-target=journal --show-status=no
