/* nodeprobe: makes exact syscalls inside a test container and prints the result.
 *
 * The busybox container has no Python; tests and the benchmark need precise
 * control over mknod/mknodat arguments (real dirfds, umask, bad pointers,
 * the i386 entry point), so this small static program does them.
 * Every command prints "ok" or the errno name (EEXIST, ...) and exits 0;
 * exit 2 means it was called wrongly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static int result(int rc) {
    if (rc < 0)
        printf("%s\n", strerrorname_np(errno));
    else
        printf("ok\n");
    return 0;
}

static mode_t node_type(const char *t) {
    switch (t[0]) {
    case 'c': return S_IFCHR;
    case 'b': return S_IFBLK;
    case 'p': return S_IFIFO;
    case 'f': return S_IFREG;
    default: fprintf(stderr, "type must be c, b, p or f\n"); exit(2);
    }
}

static long num(const char *s, int base) { return strtol(s, NULL, base); }

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* bench N PATH TYPE MAJ MIN: N mknod calls, unlinking after each success;
 * prints "calls N ok K median_ns M p99_ns P". */
static int bench(int n, const char *path, mode_t type, unsigned maj, unsigned min) {
    long *ns = calloc(n, sizeof(long));
    int ok = 0;
    if (!ns) return 2;
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = mknod(path, type | 0600, makedev(maj, min));
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        if (rc == 0) {
            ok++;
            unlink(path);
        }
    }
    qsort(ns, n, sizeof(long), cmp_long);
    printf("calls %d ok %d median_ns %ld p99_ns %ld\n", n, ok, ns[n / 2], ns[(n * 99) / 100]);
    return 0;
}

/* The i386 entry point from a 64-bit process: int $0x80 makes seccomp see
 * AUDIT_ARCH_I386 and the i386 syscall numbers (mknod is 14 there). The path
 * must sit below 4 GiB: this binary is static and not position-independent. */
static char path32[256];
static int mknod32(const char *path, mode_t mode, unsigned dev) {
    long rc;
    snprintf(path32, sizeof path32, "%s", path);
    __asm__ volatile("int $0x80" : "=a"(rc) : "a"(14), "b"(path32), "c"(mode), "d"(dev) : "memory");
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}

/* The i386 entry point with garbage in the upper halves of the 64-bit
 * registers: an i386 call is 32 bits wide, whatever the registers hold. */
static int mknod32hi(const char *path, mode_t mode, unsigned dev) {
    long rc;
    unsigned long garbage = 0xdead000000000000UL;
    snprintf(path32, sizeof path32, "%s", path);
    __asm__ volatile("int $0x80" : "=a"(rc)
                     : "a"(14), "b"(garbage | (unsigned long)path32), "c"(garbage | mode),
                       "d"(garbage | dev)
                     : "memory");
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}

/* A path the caller cannot read: it starts on a PROT_NONE page. */
static int protnone(mode_t type, unsigned maj, unsigned min) {
    long page = sysconf(_SC_PAGESIZE);
    char *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    snprintf(p, page, "/tmp/protnone-%d", getpid());
    if (mprotect(p, page, PROT_NONE) < 0) return 2;
    int rc = mknod(p, type | 0600, makedev(maj, min));
    mprotect(p, page, PROT_READ);
    if (rc == 0) unlink(p);
    return result(rc);
}

static volatile sig_atomic_t ticks;
static void tick(int sig) { (void)sig; ticks++; }

/* restart N PATH MAJ MIN: N mknod calls under a 2 ms SA_RESTART timer (as Go's
 * preemption signal does); prints "calls N ok K eexist E other O signals S". */
static int restart(int n, const char *path, unsigned maj, unsigned min) {
    struct sigaction sa = {0};
    sa.sa_handler = tick;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 2000}, {0, 2000}};
    setitimer(ITIMER_REAL, &every, NULL);
    int ok = 0, eexist = 0, other = 0;
    for (int i = 0; i < n; i++) {
        if (mknod(path, S_IFCHR | 0600, makedev(maj, min)) == 0) {
            ok++;
            unlink(path);
        } else if (errno == EEXIST) {
            eexist++;
            unlink(path);
        } else {
            other++;
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("calls %d ok %d eexist %d other %d signals %d\n", n, ok, eexist, other, (int)ticks);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) goto usage;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "mknod") && argc >= 6) {
        /* mknod PATH TYPE MAJ MIN [MODE] [UMASK] */
        mode_t mode = argc > 6 ? num(argv[6], 8) : 0666;
        if (argc > 7) umask(num(argv[7], 8));
        return result(mknod(argv[2], node_type(argv[3]) | mode,
                            makedev(num(argv[4], 10), num(argv[5], 10))));
    }
    if (!strcmp(cmd, "mknodat") && argc >= 7) {
        /* mknodat DIR NAME TYPE MAJ MIN [MODE]: DIR is opened and used as the dirfd */
        int dfd = open(argv[2], O_PATH);
        if (dfd < 0) return result(-1);
        mode_t mode = argc > 7 ? num(argv[7], 8) : 0666;
        return result(mknodat(dfd, argv[3], node_type(argv[4]) | mode,
                              makedev(num(argv[5], 10), num(argv[6], 10))));
    }
    if (!strcmp(cmd, "mknodat-fd") && argc >= 4) {
        /* mknodat-fd FD NAME: a c 1:3 node relative to a raw fd number */
        return result(mknodat(num(argv[2], 10), argv[3], S_IFCHR | 0666, makedev(1, 3)));
    }
    if (!strcmp(cmd, "mknod32") && argc >= 5)
        return result(mknod32(argv[2], S_IFCHR | 0666, makedev(num(argv[3], 10), num(argv[4], 10))));
    if (!strcmp(cmd, "mknod32hi") && argc >= 6)
        /* mknod32hi PATH TYPE MAJ MIN */
        return result(mknod32hi(argv[2], node_type(argv[3]),
                                makedev(num(argv[4], 10), num(argv[5], 10))));
    if (!strcmp(cmd, "protnone") && argc >= 5)
        /* protnone TYPE MAJ MIN */
        return protnone(node_type(argv[2]), num(argv[3], 10), num(argv[4], 10));
    if (!strcmp(cmd, "restart") && argc >= 6)
        return restart(num(argv[2], 10), argv[3], num(argv[4], 10), num(argv[5], 10));
    if (!strcmp(cmd, "groups") && argc >= 7) {
        /* groups N PATH TYPE MAJ MIN: take N supplementary groups (1..N), then mknod */
        int n = num(argv[2], 10);
        gid_t *list = calloc(n, sizeof(gid_t));
        if (!list) return 2;
        for (int i = 0; i < n; i++) list[i] = i + 1;
        if (setgroups(n, list) < 0) return result(-1);
        return result(mknod(argv[3], node_type(argv[4]) | 0600,
                            makedev(num(argv[5], 10), num(argv[6], 10))));
    }
    if (!strcmp(cmd, "badptr"))
        return result(syscall(SYS_mknodat, AT_FDCWD, (char *)8, S_IFCHR | 0666, makedev(1, 3)));
    if (!strcmp(cmd, "longpath")) {
        static char p[6000];
        memset(p, 'a', sizeof p - 1);
        return result(mknod(p, S_IFCHR | 0666, makedev(1, 3)));
    }
    if (!strcmp(cmd, "stat") && argc >= 3) {
        struct stat st;
        if (lstat(argv[2], &st) < 0) return result(-1);
        printf("mode %o uid %u gid %u major %u minor %u\n", st.st_mode, st.st_uid, st.st_gid,
               major(st.st_rdev), minor(st.st_rdev));
        return 0;
    }
    if (!strcmp(cmd, "open") && argc >= 3) {
        /* open read-write and close: "ok" means the node is usable here */
        int fd = open(argv[2], O_RDWR | O_NONBLOCK);
        if (fd >= 0) close(fd);
        return result(fd);
    }
    if (!strcmp(cmd, "write") && argc >= 3) {
        int fd = open(argv[2], O_WRONLY);
        if (fd < 0) return result(-1);
        return result(write(fd, "x", 1) == 1 ? 0 : -1);
    }
    if (!strcmp(cmd, "bench") && argc >= 7)
        return bench(num(argv[2], 10), argv[3], node_type(argv[4]), num(argv[5], 10),
                     num(argv[6], 10));
    if (!strcmp(cmd, "once") && argc >= 3) {
        /* say "started", then one mknod c 1:3 (a test stops it while it waits) */
        printf("started\n");
        fflush(stdout);
        return result(mknod(argv[2], S_IFCHR | 0600, makedev(1, 3)));
    }
    if (!strcmp(cmd, "forever") && argc >= 3) {
        /* mknod in a loop until killed: a request is nearly always in flight */
        printf("started\n");
        fflush(stdout);
        for (;;) {
            if (mknod(argv[2], S_IFCHR | 0600, makedev(1, 3)) == 0) unlink(argv[2]);
        }
    }
usage:
    fprintf(stderr, "usage: nodeprobe mknod|mknodat|mknodat-fd|mknod32|badptr|longpath|stat|"
                    "open|write|bench|once|forever|mknod32hi|protnone|restart|groups ...\n");
    return 2;
}
