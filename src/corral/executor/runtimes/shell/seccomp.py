"""The seccomp filter of the shell sandbox: Docker's default profile for an unprivileged container, tightened.

Why an allowlist: the filter's default action is ``EPERM`` and only the system calls listed in
`ALLOWED` (plus a few argument-checked rules) pass, exactly like moby's ``profiles/seccomp/
default.json``. A denylist would silently allow every system call added to the kernel after it was
written (this host runs a 6.x kernel with calls libseccomp does not even name), and "everything Docker
denies" is most easily guaranteed by starting from Docker's own list.

What is allowed is Docker's default for a container with Docker's default capabilities *minus* every
rule Docker only adds for a capability (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_TIME, ...): the sandbox
runs with no capabilities at all. So these are refused with EPERM, as in Docker:
- new namespaces and mounts: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag, ``mount``,
  ``umount2``, ``pivot_root``, ``chroot``, ``fsopen``/``fsmount``/``fsconfig``/``fspick``/
  ``move_mount``/``open_tree``/``mount_setattr`` (``unshare -Ur`` fails: no user namespace, no mount);
- the kernel keyring (not namespaced, shared by every process of a uid): ``keyctl``, ``add_key``,
  ``request_key``;
- ``bpf``, ``perf_event_open``, ``userfaultfd``, ``fanotify_init``, ``lookup_dcookie``, ``quotactl``
  (+``_fd``), ``syslog``, ``kexec_load``/``kexec_file_load``, ``init_module``/``finit_module``/
  ``delete_module``, ``reboot``, ``swapon``/``swapoff``, ``acct``, ``settimeofday``/``clock_settime``/
  ``stime``, ``open_by_handle_at``, ``iopl``/``ioperm``, ``uselib``, ``vm86``/``vm86old``, ``_sysctl``,
  ``nfsservctl``, ``kcmp``, ``pidfd_getfd``, ``process_madvise``, ``mbind``/``set_mempolicy``,
  ``vhangup``, ``sethostname``/``setdomainname``, ``personality`` other than the values Docker allows
  (0, PER_LINUX32 = 8, UNAME26 = 0x20000, 0x20008 and the query 0xffffffff);
- ``clone3`` returns ENOSYS (not EPERM), so glibc falls back to ``clone``, whose flags a classic BPF
  filter *can* inspect (clone3 passes them in memory).

Stricter than Docker's default:
- ``io_uring_setup``/``io_uring_enter``/``io_uring_register`` are refused (moby itself dropped them from
  its default in v25: a large kernel attack surface whose operations bypass seccomp);
- ``name_to_handle_at`` is refused (file handles are only useful with ``open_by_handle_at``);
- ``socket(AF_VSOCK, ...)`` is refused (as in current moby: a way out to the hypervisor);
- only the native architecture (x86_64 here) is allowed: Docker also admits the x86 and x32 ABIs;
  here a 32-bit ``int 0x80`` call and an x32 call (number | 0x40000000) kill the process with SIGSYS
  (libseccomp's bad-architecture action, set to KILL_PROCESS), so no ABI escapes the number checks.

Allowed although Docker gates some of it: ``ptrace``, ``process_vm_readv``/``process_vm_writev`` --
Docker allows these without CAP_SYS_PTRACE on kernels >= 4.8 (where seccomp re-checks a system call a
tracer changed), and here every job has its own uid (see `corral.executor.identity`), so a step can
only trace its own processes. Debuggers and ``strace`` keep working. Also allowed, as in Docker:
``setuid``-family calls (useless without capabilities, and no_new_privs is set), ``chown``, ``mknod``
(fifos and sockets only without CAP_MKNOD), ``seccomp`` (stacking more filters), ``landlock_*``.

The filter is compiled once per executor process (`bpf_program`, libseccomp through the ``pyseccomp``
ctypes binding) and handed to bubblewrap as a fresh memfd per step (`program_fd`, ``--seccomp FD``);
bubblewrap installs it just before it executes the step's ``setpriv``, so it binds every process of the
step and cannot be removed.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ALLOWED", "SeccompUnavailable", "bpf_program", "program_fd"]

AF_VSOCK = 40
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000
SAFE_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # Docker's list

# moby profiles/seccomp/default.json, the unconditional SCMP_ACT_ALLOW group, minus io_uring_* and
# name_to_handle_at (see above). Names libseccomp does not know on this architecture are skipped.
ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync",
    "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64",
    "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64",
    "futex_waitv", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid",
    "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect",
    "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64",
    "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill",
    "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid",
    "write", "writev",
    # Docker: allowed without CAP_SYS_PTRACE on kernels >= 4.8 (this code needs 5.x anyway).
    "ptrace", "process_vm_readv", "process_vm_writev",
    # Docker: per-architecture groups, for amd64.
    "arch_prctl", "modify_ldt",
)  # fmt: skip


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is missing or refused to build the filter."""


@functools.cache
def bpf_program() -> bytes:
    """The compiled filter (classic BPF for the native architecture); built once per process."""
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]
    except (ImportError, RuntimeError) as exc:  # pyseccomp raises RuntimeError without libseccomp.so
        raise SeccompUnavailable(f"libseccomp is not usable: {exc} (apt-get install libseccomp2)") from exc
    try:
        f = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
        f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # x86 (int 0x80) etc.: no other ABI
        for name in ALLOWED:
            if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # unknown on this architecture: skip
                f.add_rule(sc.ALLOW, name)
        f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.NE, AF_VSOCK))
        for value in SAFE_PERSONALITIES:
            f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, value))
        # clone(flags, ...) without any namespace flag (x86_64 argument order; s390 differs).
        f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NAMESPACE_FLAGS, 0))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            program = out.read()
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp cannot build the sandbox's seccomp filter: {exc}") from exc
    if not program or len(program) % 8:
        raise SeccompUnavailable(f"libseccomp produced a malformed filter ({len(program)} bytes)")
    return program


@contextmanager
def program_fd() -> Iterator[int]:
    """A fresh memfd holding `bpf_program()`, positioned at 0, for bwrap's ``--seccomp FD``.

    One per sandbox: bwrap reads it to EOF through the shared file offset, so a descriptor must not
    be handed to two sandboxes. Close-on-exec is set; ``pass_fds`` clears it in the child only.
    """
    program = bpf_program()
    fd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)  # a few KiB: one write
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)
