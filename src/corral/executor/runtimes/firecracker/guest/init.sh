#!/bin/busybox sh
# corral's guest init: PID 1 of every job microVM (built into the initramfs by assets.py).
#
# It sets the VM up (modules, the control share, the scratch disk, the workspace), announces
# "ready", then sources /ctl/job.sh, which the host wrote: one `step` line per step. Each step runs
# in a fresh overlay of its image's disk (read-only ext4) with a writable layer on the scratch disk,
# chrooted, as the job's unprivileged uid with no capabilities; its output goes through a pipe to
# the job's channel, a virtio console (hvc0; the serial port ttyS0 is the kernel's and ran at about
# 0.4 MB/s under TCG, hvc0 at memory speed). Control lines (`RS corral-<nonce>:<event>`) are written by init alone: the
# nonce is in /ctl/nonce, which a step cannot read (it is outside its chroot, and init's memory and
# environment are root's), so a step cannot forge the end of a step or its exit code.
# After the last step, or at the first that fails, init powers the VM off.
export PATH=/bin
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /ctl /ws /steps /scratch /img
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo -1000 > /proc/self/oom_score_adj  # the guest's OOM killer takes a step, never init

CON=/dev/ttyS0  # until the virtio console is there
NONCE=
mark() { printf '\036corral-%s:%s\n' "$NONCE" "$*" >&9; }
die() { mark "error $*"; sync; poweroff -f; sleep 10; }

for m in $(cat /corral/modules); do
    insmod "/lib/modules/$m.ko" || { echo "corral-init: insmod $m failed" > $CON; poweroff -f; }
done
# /dev/hvc0 exists as soon as the hvc driver does; the virtio port behind it may bind later, and
# what is written before it does is lost: wait for the port itself
port() { for p in /sys/class/virtio-ports/vport*p0; do [ -e "$p" ] && return 0; done; return 1; }
for _ in $(seq 50); do port && break; sleep 0.1; done
port && [ -c /dev/hvc0 ] || { echo "corral-init: no virtio console" > $CON; poweroff -f; }
CON=/dev/hvc0
exec 9> $CON  # held open by init (and by nothing a step runs): the tty keeps its raw mode
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,ro" ctl /ctl || { echo "corral-init: no control share" > $CON; poweroff -f; }
read -r NONCE < /ctl/nonce

disk() {  # the block device whose virtio serial is $1
    for s in /sys/block/vd*/serial; do
        [ "$(cat "$s")" = "$1" ] && { d=${s%/serial}; echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}

dev=$(disk scratch) || die "no scratch disk"
mount -t ext4 -o noinit_itable "$dev" /scratch || die "cannot mount the scratch disk"
mount -t 9p -o "$P9" ws /ws || die "cannot mount the workspace"
mount -t 9p -o "$P9,ro" steps /steps || die "cannot mount the step scripts"
stty -F $CON raw -echo 2>/dev/null || die "cannot set the console to raw mode"
echo 1 > /proc/sys/kernel/printk  # kernel messages stay off the job's log
. /lib/corral/net.sh  # the NIC of a job with network (none: only lo); defines net_root
mark ready

MOUNTED=" "
oom_kills() { while read -r k v; do [ "$k" = oom_kill ] && { echo "$v"; return; }; done < /proc/vmstat; echo 0; }

# step INDEX IMAGE-SERIAL UID GID DIR ENV... ARGV...   (ENV: NAME=VALUE words; ARGV[0] has no '=')
step() {
    idx=$1 img=$2 uid=$3 gid=$4 dir=$5
    shift 5
    lower=/img/$img
    case "$MOUNTED" in *" $img "*) ;; *)
        d=$(disk "$img") || die "no disk for image $img"
        mkdir -p "$lower" && mount -t ext4 -o ro,noload "$d" "$lower" || die "cannot mount image $img"
        MOUNTED="$MOUNTED $img " ;;
    esac
    w=/scratch/s$idx root=/tmp/root$idx
    mkdir -p "$w/upper" "$w/work" "$root" || die "scratch disk full"
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$w/upper,workdir=$w/work" "$root" \
        || die "cannot mount the root of step $idx"
    for p in dev proc data .corral-steps .corral; do
        [ -d "$root/$p" ] && [ ! -L "$root/$p" ] || { rm -rf "$root/$p"; mkdir -p "$root/$p"; } || die "image root"
    done
    root_dev "$root"  # root_dev, root_job, run_root, end_root: guest/clistep.sh (clistep has them too)
    root_job "$root"
    net_root "$root"
    [ -d "$root/tmp" ] || mkdir -p "$root/tmp"
    chmod 1777 "$root/tmp" 2>/dev/null
    run_root "$idx" "$root" "$uid" "$gid" "$dir" "$@"
    end_root "$idx" "$root" "$w"
}

. /lib/corral/clistep.sh  # clistep (CLI steps) and the parts of a step it shares with step
. /ctl/job.sh
mark done
sync
poweroff -f
sleep 10
