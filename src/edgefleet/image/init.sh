#!/bin/sh
# edgefleet's initramfs /init (busybox): load the few modules a slot needs, open the booted
# slot through dm-verity with the root hash from the kernel command line (which the UKI
# carries, so the firmware measured it into PCR 11), mount it read-only, mount the data
# partition, and hand over to systemd. A slot that fails verification is never mounted.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "edgefleet-initrd: $*" >/dev/kmsg; echo "edgefleet-initrd: $*"; }
fail() {
    say "FATAL: $*"
    # A refused slot must not boot; the boot loader's counter falls back to the other slot.
    echo 1 >/proc/sys/kernel/sysrq 2>/dev/null
    sleep 2
    echo b >/proc/sysrq-trigger
    sleep 60
}

while read -r module; do
    insmod "/lib/modules/$module" 2>/dev/null || true
done </lib/modules/load.order

verity=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        edgefleet.verity=*) verity="${arg#edgefleet.verity=}" ;;
    esac
done
[ -n "$verity" ] || fail "no edgefleet.verity= on the kernel command line"
data_blocks="${verity%%,*}"; rest="${verity#*,}"
hash_offset="${rest%%,*}"; root_hash="${rest#*,}"

# Partitions by GPT label (PARTNAME in their uevent): root-a, root-b, data.
find_part() {
    for uevent in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$1" "$uevent"; then
            echo "/dev/$(grep '^DEVNAME=' "$uevent" | cut -d= -f2)"
            return 0
        fi
    done
    return 1
}
for _ in $(seq 1 100); do
    data_dev="$(find_part data)" && find_part root-a >/dev/null && break
    sleep 0.1
done
[ -n "$data_dev" ] || fail "partition data not found"

# The UKI names no slot (one UKI, one set of reference values, whichever slot holds the
# release): open each slot through dm-verity with the measured root hash and keep the one
# whose first block verifies. Reading through dm-verity checks the block's path up to the
# root hash, so a slot holding another release (or nothing) fails that read.
slot="" root_dev=""
for candidate in a b; do
    device="$(find_part "root-$candidate")" || continue
    veritysetup open "$device" probe "$device" "$root_hash" \
        --data-blocks="$data_blocks" --hash-offset="$hash_offset" 2>/dev/null || continue
    if dd if=/dev/mapper/probe of=/dev/null bs=4096 count=1 2>/dev/null; then
        slot="$candidate" root_dev="$device"
    fi
    veritysetup close probe
    [ -n "$slot" ] && break
done
[ -n "$slot" ] || fail "dm-verity refused slot a and slot b: neither matches the measured root hash"

say "slot $slot: opening $root_dev through dm-verity (root hash $root_hash)"
veritysetup open "$root_dev" root "$root_dev" "$root_hash" \
    --data-blocks="$data_blocks" --hash-offset="$hash_offset" --restart-on-corruption \
    || fail "dm-verity refused slot $slot: its hash tree does not match the measured root hash"
mkdir -p /sysroot
mount -t erofs -o ro /dev/mapper/root /sysroot || fail "slot $slot does not mount (erofs)"
mount -t ext4 -o rw,nodev,nosuid "$data_dev" /sysroot/data || fail "the data partition does not mount"
mkdir -p /sysroot/data/etc
[ -s /sysroot/data/etc/machine-id ] || cat /proc/sys/kernel/random/uuid | tr -d - >/sysroot/data/etc/machine-id
say "slot $slot verified and mounted; starting systemd"
umount /proc /sys
exec switch_root /sysroot /sbin/init
