# corral's CLI steps in the guest: sourced once by init.sh (guest/init.sh), before job.sh.
#
# A CLI step (corral's CLI, src-cli) runs in a root made of the host's /usr and the CLIs'
# installations, read-only, in the VM's 9p share "cli" (/cli/TAG: bound there by the host for a job
# with CLI steps only, runtimes/firecracker/shares.py), that the host describes at the top of job.sh
# (runtimes/firecracker/clistep.py, CliRoot):
#   cli_share TAG PATH   /cli/TAG at PATH (usr at /usr; cli0, cli1, ...: a CLI's directory)
#   cli_file N PATH      file N of the executor-made share (cliroot/files/N) at PATH
#   cli_link PATH TARGET a symlink (the usrmerge links: /bin -> usr/bin, ...)
# then `clistep` lines. The share is mounted at /cli at the first CLI step (a VM without CLI
# steps never mounts it, and finds nothing in it). Each step's root is a fresh small tmpfs, read-only once built: /etc the
# executor's (cliroot/etc: copying it took 1.2 s under TCG, binding it nothing) with passwd and
# group naming the job's uid bound over it, /tmp on the scratch disk (the job's disk limit), /data
# the workspace, /.corral-steps, a fresh /dev and /proc.
#
# Also the parts of a step that `step` (init.sh) and `clistep` share: root_dev, root_job, run_root,
# end_root (they use init's mark, die and its /ws, /steps and /corral). Each step runs in
# a cgroup of its own (v2, the pids controller: `pids_max N` in job.sh's preamble is the job's
# EXECUTOR_JOB_PIDS, 0 unbounded), so a fork bomb hits the limit instead of the guest, the step ends
# when its main process does (what it left running is killed with the group: a background process
# holding the output pipe no longer keeps the step open), and `end` reports the forks refused.

CLI_SHARES= CLI_FILES= CLI_LINKS= CLI_UP=
PIDS_MAX=0 CG=

oom_kills() {  # the guest's OOM kills so far, in _ook (read by the shell itself, no subshell)
    _ook=0
    while read -r k v; do [ "$k" = oom_kill ] && { _ook=$v; return; }; done < /proc/vmstat
}
pids_max() { case "$1" in "" | *[!0-9]*) die "bad process limit $1" ;; esac; PIDS_MAX=$1; }
P9_RO="trans=virtio,version=9p2000.L,msize=262144,ro,nosuid,nodev,cache=loose"

cli_share() { CLI_SHARES="$CLI_SHARES$1 $2
"; }
cli_file() { CLI_FILES="$CLI_FILES$1 $2
"; }
cli_link() { CLI_LINKS="$CLI_LINKS$1 $2
"; }

cli_up() {  # mount the CLI share once (read-only, cached: the host's /usr does not change under a job)
    [ -n "$CLI_UP" ] && return 0
    mkdir -p /cli && mount -t 9p -o "$P9_RO" cli /cli && [ -d /cli/cliroot/etc ] || die "no CLI share"
    CLI_UP=1
}

root_dev() {  # ROOT: a fresh /dev
    mount -t tmpfs -o size=1m,mode=755 dev "$1/dev" || die "cannot make /dev"
    mknod -m 666 "$1/dev/null" c 1 3; mknod -m 666 "$1/dev/zero" c 1 5
    mknod -m 666 "$1/dev/full" c 1 7; mknod -m 666 "$1/dev/random" c 1 8
    mknod -m 666 "$1/dev/urandom" c 1 9; mknod -m 666 "$1/dev/tty" c 5 0
    mkdir -p "$1/dev/shm" "$1/dev/pts"
    ln -s /proc/self/fd "$1/dev/fd"
}

root_job() {  # ROOT: /proc, the workspace at /data, the step scripts
    mount -t proc proc "$1/proc" || die "cannot mount /proc"
    mount -o bind /ws "$1/data" || die "cannot mount the workspace"
    mount -o bind,ro /steps "$1/.corral-steps" || die "cannot mount the step scripts"
}

cg_step() {  # IDX: a fresh cgroup for the step, bounded by PIDS_MAX; sets _cg
    if [ -z "$CG" ]; then
        mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup \
            && echo +pids > /sys/fs/cgroup/cgroup.subtree_control || die "no pids cgroup (cgroup v2)"
        CG=/sys/fs/cgroup
    fi
    _cg=$CG/s$1
    mkdir "$_cg" || die "cannot make the cgroup of step $1"
    [ "$PIDS_MAX" = 0 ] || echo "$PIDS_MAX" > "$_cg/pids.max" || die "cannot set the process limit"
}

# run_root IDX ROOT UID GID DIR ENV... ARGV...: the step chrooted in ROOT, in /data/DIR, as
# UID:GID with no capabilities and no new privileges, with only ENV, in its cgroup; its output to
# the job's channel; sets rc (and oom0, for end_root). The step ends when its main process does:
# then the whole group is killed, so nothing it left holds the pipe open.
run_root() {
    _idx=$1 _root=$2 _uid=$3 _gid=$4 _dir=$5
    shift 5
    cg_step "$_idx"
    oom_kills
    oom0=$_ook
    mark "start $_idx"
    set -o pipefail
    {
        # the background child moves itself into the step's cgroup (0: the writing process) and
        # takes the OOM score every process has (init's is -1000) with builtins; /corral/step
        # (guest/step.c) chroots, drops every privilege, enters /data/DIR as the job's uid and
        # execs the step with exactly its ENV
        { echo 0 > "$_cg/cgroup.procs" && echo 0 > /proc/self/oom_score_adj \
            && exec /corral/step "$_root" "$_uid" "$_gid" "$_dir" "$@"; } &
        wait $!
        _rc=$?
        echo 1 > "$_cg/cgroup.kill" 2>/dev/null || kill -9 $(cat "$_cg/cgroup.procs") 2>/dev/null
        exit $_rc
    } < /dev/null 9>&- 2>&1 | cat >&9
    rc=$?
    set +o pipefail
}

umount_tree() {  # every mount at or below $1, the deepest first
    awk -v r="$1" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r > /tmp/.umount
    while read -r m; do umount -l "$m" 2>/dev/null; done < /tmp/.umount
    rm -f /tmp/.umount
}

# end_root IDX ROOT SCRATCH-DIR: after the step: what it left running killed, its OOM kills and a
# full disk (scratch or workspace) measured, its root unmounted, its scratch dir removed, `end`
# marked; a failed step powers the VM off (the job stops there)
end_root() {
    kill -9 -1 2>/dev/null  # whatever the step left running (init itself survives)
    sleep 0.05
    pids=0  # forks the process limit refused
    while read -r k v; do [ "$k" = max ] && pids=$v; done < "$_cg/pids.events"
    for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$_cg" 2>/dev/null && break; sleep 0.05; done
    oom_kills
    oom=$(( _ook - oom0 ))
    # the job's disk limit: the scratch disk (the step's root and /tmp) or the workspace (the host's
    # quota filesystem over 9p, whose statfs the guest sees; stat -f: df would ask the mount point,
    # /rw) is full: under 256 KiB left
    full=0
    for d in /scratch /ws/; do
        avail=$(stat -f -c '%a %S' "$d" 2>/dev/null)
        case "$avail" in *[0-9]" "[0-9]*) [ $(( ${avail% *} * ${avail#* } )) -lt 262144 ] && full=1 ;; esac
    done
    umount_tree "$2"
    rm -rf "$3"
    mark "end $1 $rc $oom $full $pids"
    [ "$rc" = 0 ] || { mark done; sync; poweroff -f; sleep 10; }
}

# clistep INDEX UID GID DIR ENV... ARGV...   (as `step`, without an image; ENV: NAME=VALUE words)
clistep() {
    idx=$1 uid=$2 gid=$3 dir=$4
    shift 4
    cli_up
    w=/scratch/s$idx root=/tmp/root$idx
    mkdir -p "$w/tmp" "$w/etc" "$root" || die "scratch disk full"
    chmod 1777 "$w/tmp"
    # /etc: the executor's (read-only), with passwd and group naming the job's uid (and, for a job
    # with network, its resolver: net.sh's net_root) bound over its placeholders
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\njob:x:%s:%s:job:/tmp:/bin/sh\n' "$uid" "$gid" \
        > "$w/etc/passwd"  # (never uid 0: the step starter refuses it)
    printf 'root:x:0:\n' > "$w/etc/group"
    [ "$gid" = 0 ] || printf 'job:x:%s:\n' "$gid" >> "$w/etc/group"
    command -v net_root > /dev/null && net_root "$w"
    chmod 644 "$w"/etc/*
    mount -t tmpfs -o size=1m,mode=755 cliroot "$root" || die "cannot make the root of step $idx"
    mkdir -p "$root/usr" "$root/etc" "$root/dev" "$root/proc" "$root/tmp" "$root/data" \
        "$root/.corral-steps" || die "cannot make the root of step $idx"
    mount -o bind /cli/cliroot/etc "$root/etc" || die "cannot mount /etc for step $idx"
    for f in "$w"/etc/*; do
        mount -o bind "$f" "$root/etc/${f##*/}" || die "cannot mount /etc/${f##*/} for step $idx"
    done
    while read -r path target; do
        [ -n "$path" ] || continue
        ln -s "$target" "$root$path" || die "cannot make $path for step $idx"
    done <<EOF
$CLI_LINKS
EOF
    root_dev "$root"
    root_job "$root"
    mount -o bind "$w/tmp" "$root/tmp" || die "cannot mount /tmp for step $idx"
    while read -r tag path; do
        [ -n "$tag" ] || continue
        mkdir -p "$root$path" && mount -o bind "/cli/$tag" "$root$path" || die "cannot mount $path"
    done <<EOF
$CLI_SHARES
EOF
    while read -r n path; do
        [ -n "$n" ] || continue
        mkdir -p "$root${path%/*}" && touch "$root$path" && mount -o bind "/cli/cliroot/files/$n" "$root$path" \
            || die "cannot mount $path"
    done <<EOF
$CLI_FILES
EOF
    mount -o remount,ro "$root" || die "cannot make the root of step $idx read-only"
    run_root "$idx" "$root" "$uid" "$gid" "$dir" "$@"
    end_root "$idx" "$root" "$w"
}
