/*
 * corral's step starter in the guest: /corral/step ROOT UID GID DIR [NAME=VALUE...] ARGV...
 *
 * The last link of a step's start (guest/clistep.sh, run_root), run by init's child as root with
 * every capability; built static by assets.py (gcc -static) into the initramfs. One program where
 * the guest had four (busybox chroot, util-linux setpriv through its loader, busybox sh for the cd,
 * busybox env -i), so that the whole drop is in one place, in order, checked and tested
 * (tests/integration/test_firecracker_step.py; side by side it starts a warm job no faster than the
 * chain did: 410 vs 421 ms median under TCG). In order:
 *
 *   0. UID 0 refused: root without capabilities still owns root's files (/proc/sys among them:
 *      core_pattern would run its program as root with every capability), so a step never is root;
 *      every file descriptor but 0, 1 and 2 closed (a directory's would lead out of the chroot);
 *      every signal's default action and an empty signal mask (a background child of init's shell
 *      ignores SIGINT and SIGQUIT, and an ignored signal stays ignored across exec);
 *   1. chroot ROOT, chdir /;
 *   2. every capability out of the bounding set (0..63: those the kernel knows), the ambient set
 *      cleared;
 *   3. no supplementary groups, then GID and UID as real, effective and saved ids (checked back);
 *   4. no new privileges (setuid bits and file capabilities mean nothing from here on);
 *   5. no capabilities left in the permitted, effective and inheritable sets;
 *   6. as UID: chdir /data/DIR (the workspace, mounted by init), so that a link the job made in
 *      its workspace is followed with the job's rights, never root's;
 *   7. exec ARGV with exactly the leading NAME=VALUE words as its environment (as `env -i`: the
 *      words up to the first without '=' are the environment, ARGV[0] has none; the command is
 *      looked up in that environment's PATH).
 *
 * Exit status (the step's, as the shell and env gave before): 126 when DIR cannot be entered or
 * ARGV[0] cannot be executed, 127 when it does not exist, 125 for anything else; one line on
 * stderr (the step's output) saying why. Nothing here reads a file the job controls before step 6.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

extern char **environ;

static void fail(int status, const char *what, const char *arg) {
    int e = errno;
    fprintf(stderr, "corral-step: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(e));
    _exit(status);
}

static unsigned int id(const char *s, const char *what) {
    char *end = NULL;
    unsigned long v;
    if (s[0] < '0' || s[0] > '9') {
        fprintf(stderr, "corral-step: bad %s '%s'\n", what, s);
        _exit(125);
    }
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > 2147483647UL) {
        fprintf(stderr, "corral-step: bad %s '%s'\n", what, s);
        _exit(125);
    }
    return (unsigned int)v;
}

int main(int argc, char **argv) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
    char dir[PATH_MAX];
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    unsigned int uid, gid;
    sigset_t mask;
    char **env;
    int first, cap, n, sig;

    if (argc < 6) {
        fprintf(stderr, "usage: %s ROOT UID GID DIR [NAME=VALUE...] ARGV...\n", argv[0]);
        return 125;
    }
    uid = id(argv[2], "uid");
    gid = id(argv[3], "gid");
    if (uid == 0) {
        fprintf(stderr, "corral-step: a step never runs as uid 0\n");
        return 125;
    }
    n = snprintf(dir, sizeof dir, "/data/%s", argv[4]);
    if (n < 0 || (size_t)n >= sizeof dir) {
        errno = ENAMETOOLONG;
        fail(126, "cannot enter", argv[4]);
    }
    for (first = 5; first < argc && strchr(argv[first], '=') != NULL; first++)
        ;
    if (first == argc) {
        fprintf(stderr, "corral-step: no command\n");
        return 125;
    }

    if (close_range(3, ~0U, 0) != 0)
        fail(125, "cannot close the inherited file descriptors", NULL);
    if (sigemptyset(&mask) != 0 || sigprocmask(SIG_SETMASK, &mask, NULL) != 0)
        fail(125, "cannot clear the signal mask", NULL);
    for (sig = 1; sig < NSIG; sig++)
        (void)signal(sig, SIG_DFL); /* SIGKILL, SIGSTOP and glibc's own refuse: nothing to reset */
    if (chroot(argv[1]) != 0 || chdir("/") != 0)
        fail(125, "cannot chroot to", argv[1]);
    for (cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
            fail(125, "cannot drop a capability from the bounding set", NULL);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        fail(125, "cannot clear the ambient capabilities", NULL);
    if (setgroups(0, NULL) != 0)
        fail(125, "cannot clear the supplementary groups", NULL);
    if (setresgid(gid, gid, gid) != 0)
        fail(125, "cannot set the gid", argv[3]);
    if (setresuid(uid, uid, uid) != 0)
        fail(125, "cannot set the uid", argv[2]);
    if (getresuid(&ruid, &euid, &suid) != 0 || getresgid(&rgid, &egid, &sgid) != 0 || ruid != uid ||
        euid != uid || suid != uid || rgid != gid || egid != gid || sgid != gid) {
        errno = EPERM;
        fail(125, "the ids did not change", NULL);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(125, "cannot set no_new_privs", NULL);
    memset(none, 0, sizeof none);
    if (syscall(SYS_capset, &header, none) != 0)
        fail(125, "cannot drop the capabilities", NULL);

    if (chdir(dir) != 0)
        fail(126, "cannot enter", dir);
    env = calloc((size_t)(first - 5) + 1, sizeof *env); /* argv[5] .. argv[first - 1], then NULL */
    if (env == NULL)
        fail(125, "out of memory", NULL);
    memcpy(env, argv + 5, (size_t)(first - 5) * sizeof *env);
    environ = env;
    execvp(argv[first], argv + first);
    fail(errno == ENOENT ? 127 : 126, "cannot execute", argv[first]);
    return 125;
}
