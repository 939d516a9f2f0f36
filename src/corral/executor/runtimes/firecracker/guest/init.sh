#!/bin/busybox sh
# corral's guest init: PID 1 of every job microVM (built into the initramfs by assets.py).
#
# It sets the VM up knowing no job yet (modules, the console, its two 9p shares "job" (read-only)
# and "rw", both empty, the scratch disk), announces "ready", and waits, at most corral.idle=
# seconds, for the host's `go <nonce>` line on the console's input. By then the host has staged the
# job (runtime.py, shares.py): /job/ctl/job.sh (one `step` line per step), /job/steps (the step
# scripts), /job/img/<serial>.ext4 (its images' disks) and the workspace at /rw/ws (/ctl, /steps
# and /ws link to them), and init sources /ctl/job.sh. Each step runs in a fresh overlay of its
# image's disk (read-only ext4, loop-mounted from the share) with a writable layer on the scratch
# disk, chrooted, as the job's unprivileged uid with no capabilities; its output goes through a pipe
# to the job's channel, a virtio console (hvc0; the serial port ttyS0 is the kernel's and ran at
# about 0.4 MB/s under TCG, hvc0 at memory speed). Control lines (`RS corral-<nonce>:<event>`) are
# written by init alone: before `go` with the nonce "boot" (nothing but init has run), then with the
# job's, which init read from the console: no file holds it, no step can read the console (it is
# not in a step's /dev, and init's memory and environment are root's), so a step cannot forge the
# end of a step or its exit code. After the last step, or at the first that fails, init powers the
# VM off.
export PATH=/bin
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /scratch /img /job /rw
/bin/busybox --install -s /bin
# where the job's files are once it is staged (links: nothing to mount after `go`)
ln -s /rw/ws /ws && ln -s /job/steps /steps && ln -s /job/ctl /ctl
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo -1000 > /proc/self/oom_score_adj  # the guest's OOM killer takes a step, never init
# No address-space randomisation in the guest: under TCG a program's translated code is found
# again only at the same addresses, so each step then reuses what earlier ones (and a warm VM's
# rehearsal) translated. The VM runs one job's processes and nothing else of value to them.
echo 0 > /proc/sys/kernel/randomize_va_space

CON=/dev/ttyS0  # until the virtio console is there
NONCE=boot  # until the job's `go` line
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
mount -t 9p -o "$P9,ro" job /job || die "no job share"
mount -t 9p -o "$P9" rw /rw || die "no workspace share"

disk() {  # the block device whose virtio serial is $1
    for s in /sys/block/vd*/serial; do
        [ "$(cat "$s")" = "$1" ] && { d=${s%/serial}; echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}

dev=$(disk scratch) || die "no scratch disk"
mount -t ext4 -o noinit_itable "$dev" /scratch || die "cannot mount the scratch disk"
stty -F $CON raw -echo 2>/dev/null || die "cannot set the console to raw mode"
echo 1 > /proc/sys/kernel/printk  # kernel messages stay off the job's log
. /lib/corral/net.sh  # the NIC of a job with network (none: only lo); defines net_root
. /lib/corral/clistep.sh  # clistep (CLI steps) and the parts of a step it shares with step

# corral.rehearse (warm-pool VMs): run a step's path once before the job (overlay, /dev, /proc,
# binds, cgroup, the step starter, as nobody, `true` from /corral), so that TCG has translated that
# code, the kernel's and the tools', before a job waits for it
case " $(cat /proc/cmdline) " in *" corral.rehearse "*)
    w=/scratch/.rehearsal root=/tmp/.rehearsal
    mkdir -p "$w/upper" "$w/work" "$root" /tmp/.rehearsal-lower
    if mount -t overlay overlay -o "lowerdir=/tmp/.rehearsal-lower,upperdir=$w/upper,workdir=$w/work" "$root"
    then
        for p in dev proc data .corral-steps .corral; do mkdir -p "$root/$p"; done
        # (root_job's own binds need the job's files: /proc and /corral, bound the same way)
        mount -t proc proc "$root/proc" && mount -o bind,ro /corral "$root/.corral" \
            && { root_dev "$root"; run_root R "$root" 65534 65534 "" /.corral/busybox true; } 9>/dev/null
        rmdir "$_cg" 2>/dev/null
        umount_tree "$root"
    fi
    rm -rf "$w" "$root" /tmp/.rehearsal-lower
    ;;
esac
mark ready

# the job: `go <nonce>` once the host has staged it (a warm VM waits here for its job, bounded)
IDLE=3600
for w in $(cat /proc/cmdline); do case "$w" in corral.idle=*) IDLE=${w#corral.idle=} ;; esac; done
read -r -t "$IDLE" verb nonce < $CON || { sync; poweroff -f; sleep 10; }
case "$nonce" in "" | *[!0-9a-f]*) verb= ;; esac
[ "$verb" = go ] || { poweroff -f; sleep 10; }
NONCE=$nonce

MOUNTED=" "

# step INDEX IMAGE-SERIAL UID GID DIR ENV... ARGV...   (ENV: NAME=VALUE words; ARGV[0] has no '=')
step() {
    idx=$1 img=$2 uid=$3 gid=$4 dir=$5
    shift 5
    lower=/img/$img w=/scratch/s$idx root=/tmp/root$idx
    mkdir -p "$lower" "$w/upper" "$w/work" "$root" || die "scratch disk full"
    case "$MOUNTED" in *" $img "*) ;; *)
        mount -t ext4 -o ro,noload,loop "/job/img/$img.ext4" "$lower" || die "cannot mount image $img"
        MOUNTED="$MOUNTED $img " ;;
    esac
    mount -t overlay overlay -o "lowerdir=$lower,upperdir=$w/upper,workdir=$w/work" "$root" \
        || die "cannot mount the root of step $idx"
    for p in dev proc data .corral-steps; do
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

. /ctl/job.sh
mark done
sync
poweroff -f
sleep 10
