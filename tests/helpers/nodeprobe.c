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
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/xattr.h>
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

/* umountafter N SRC DIR TYPE MAJ MIN: N times, bind SRC on DIR, make the node
 * DIR/n, remove it and unmount DIR at once, as a privileged container's
 * root may; prints "ok", or "EBUSY K" when K unmounts found the mount still
 * busy after the mknod had returned (retried until it goes), or the errno of
 * the first other failure.  The kernel itself never answers EBUSY here. */
static int umountafter(int n, const char *src, const char *dir, mode_t type, unsigned maj,
                       unsigned min) {
    char node[4096];
    int busy = 0;
    snprintf(node, sizeof node, "%s/n", dir);
    for (int i = 0; i < n; i++) {
        if (mount(src, dir, NULL, MS_BIND, NULL) < 0 ||
            mknod(node, type | 0600, makedev(maj, min)) < 0 || unlink(node) < 0)
            return result(-1);
        while (umount2(dir, 0) < 0) {
            if (errno != EBUSY) return result(-1);
            busy++;
            usleep(100);
        }
    }
    if (busy) printf("EBUSY %d\n", busy);
    else printf("ok\n");
    return 0;
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

/* XATTR flags by name: "-" (0), "create", "replace", or a number. */
static int xattr_flags(const char *s) {
    if (!strcmp(s, "create")) return XATTR_CREATE;
    if (!strcmp(s, "replace")) return XATTR_REPLACE;
    if (!strcmp(s, "-")) return 0;
    return num(s, 0);
}

/* xattr VARIANT PATH NAME VALUE [FLAGS]: VARIANT is set, lset, fset (PATH opened
 * O_RDONLY) or fset-opath (PATH opened O_PATH, which fsetxattr refuses). */
static int xattr(const char *variant, const char *path, const char *name, const char *value,
                 int flags) {
    size_t size = strlen(value);
    if (!strcmp(variant, "set")) return result(setxattr(path, name, value, size, flags));
    if (!strcmp(variant, "lset")) return result(lsetxattr(path, name, value, size, flags));
    int fd = open(path, !strcmp(variant, "fset-opath") ? O_PATH : O_RDONLY);
    if (fd < 0) return result(-1);
    int rc = fsetxattr(fd, name, value, size, flags);
    int saved = errno;
    close(fd);
    errno = saved;
    return result(rc);
}

/* xattrbench N PATH NAME: N setxattr calls of a 1-byte value;
 * prints "calls N ok K median_ns M p99_ns P". */
static int xattrbench(int n, const char *path, const char *name) {
    long *ns = calloc(n, sizeof(long));
    int ok = 0;
    if (!ns) return 2;
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = setxattr(path, name, "y", 1, 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        if (rc == 0) ok++;
    }
    qsort(ns, n, sizeof(long), cmp_long);
    printf("calls %d ok %d median_ns %ld p99_ns %ld\n", n, ok, ns[n / 2], ns[(n * 99) / 100]);
    return 0;
}

/* struct compat_sysinfo, as an i386 program sees struct sysinfo: 64 bytes. */
struct sysinfo32 {
    int32_t uptime;
    uint32_t loads[3];
    uint32_t totalram, freeram, sharedram, bufferram, totalswap, freeswap;
    uint16_t procs, pad;
    uint32_t totalhigh, freehigh, mem_unit;
    char _f[8];
};
_Static_assert(sizeof(struct sysinfo32) == 64, "i386 struct sysinfo is 64 bytes");

/* Every field, and the 64-bit struct's padding bytes (which must be 0). */
static int print_sysinfo(void) {
    struct sysinfo si;
    memset(&si, 0xAA, sizeof si);
    if (sysinfo(&si) < 0) return result(-1);
    unsigned pad = 0;
    for (size_t i = offsetof(struct sysinfo, procs) + 4; i < offsetof(struct sysinfo, totalhigh); i++)
        pad |= ((unsigned char *)&si)[i];
    printf("uptime %ld loads %lu %lu %lu totalram %lu freeram %lu sharedram %lu bufferram %lu "
           "totalswap %lu freeswap %lu procs %u pad %u totalhigh %lu freehigh %lu mem_unit %u "
           "padding %u\n", si.uptime, si.loads[0], si.loads[1], si.loads[2], si.totalram,
           si.freeram, si.sharedram, si.bufferram, si.totalswap, si.freeswap, si.procs, si.pad,
           si.totalhigh, si.freehigh, si.mem_unit, pad);
    return 0;
}

/* The i386 entry point (sysinfo is 116 there) into a buffer below 4 GiB; the
 * 48 bytes after the 64-byte struct are a guard that must stay untouched. */
static unsigned char sysinfo32_buffer[64 + 48];
static int print_sysinfo32(void) {
    long rc;
    memset(sysinfo32_buffer, 0xAA, sizeof sysinfo32_buffer);
    __asm__ volatile("int $0x80" : "=a"(rc) : "a"(116), "b"(sysinfo32_buffer) : "memory");
    if (rc < 0) {
        errno = -rc;
        return result(-1);
    }
    struct sysinfo32 si;
    memcpy(&si, sysinfo32_buffer, sizeof si);
    int guard = 1;
    for (size_t i = 64; i < sizeof sysinfo32_buffer; i++)
        guard &= sysinfo32_buffer[i] == 0xAA;
    unsigned f = 0;
    for (size_t i = 0; i < sizeof si._f; i++) f |= (unsigned char)si._f[i];
    printf("uptime %d loads %u %u %u totalram %u freeram %u sharedram %u bufferram %u "
           "totalswap %u freeswap %u procs %u pad %u totalhigh %u freehigh %u mem_unit %u "
           "padding %u guard %s\n", si.uptime, si.loads[0], si.loads[1], si.loads[2], si.totalram,
           si.freeram, si.sharedram, si.bufferram, si.totalswap, si.freeswap, si.procs, si.pad,
           si.totalhigh, si.freehigh, si.mem_unit, f, guard ? "intact" : "overwritten");
    return 0;
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* flip DIR SECONDS: DIR/comp is swapped (renameat2 RENAME_EXCHANGE, one atomic
 * step each) between a real directory and two symlinks that point out of it:
 * "/" and a "../" chain that climbs past any root.  A walk of DIR/comp/LEAF
 * that races it lands in the directory, or at the root of whoever resolves the
 * link: the container's root for the kernel and for a correct supervisor, the
 * host's for one that follows links in its own root.  The deadline is checked
 * only after whole cycles, so DIR/comp is the directory again at the end.
 * Prints "started", then "flips N". */
static int flip(const char *dir, int seconds) {
    int dfd = open(dir, O_PATH | O_DIRECTORY);
    if (dfd < 0) return result(-1);
    if (mkdirat(dfd, "comp", 0777) < 0 && errno != EEXIST) return result(-1);
    if (symlinkat("/", dfd, "abs") < 0 && errno != EEXIST) return result(-1);
    if (symlinkat("../../../../../../../../../../../../../../..", dfd, "rel") < 0 &&
        errno != EEXIST)
        return result(-1);
    printf("started\n");
    fflush(stdout);
    static const char *const links[] = {"abs", "rel"};
    long deadline = now_ns() + seconds * 1000000000L, flips = 0;
    while (now_ns() < deadline) {
        for (int i = 0; i < 4; i++) {  /* dir -> abs -> dir -> rel -> dir */
            if (renameat2(dfd, "comp", dfd, links[i / 2], RENAME_EXCHANGE) < 0)
                return result(-1);
            flips++;
        }
    }
    printf("flips %ld\n", flips);
    return 0;
}

/* mknodloop PATH SECONDS: mknod PATH c 1 3, for SECONDS, where PATH is
 * DIR/comp/LEAF and DIR/comp is being flipped (flip).  Each node made is then
 * looked for where it may rightly be, and removed: in the directory (through
 * an fd of it, whatever its name is at that moment) or at "/LEAF", where a
 * symlink to the root leads.  Found in neither, it went somewhere this
 * process cannot see: "lost".  Prints "calls N ok K indir I atroot R lost L"
 * and a count for each errno met ("ENOENT 12 ..."). */
static int mknodloop(const char *path, int seconds) {
    static long by_errno[256];
    char dir[4096], atroot[4096];
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path || (size_t)(slash - path) >= sizeof dir) return 2;
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    snprintf(atroot, sizeof atroot, "/%s", slash + 1);
    long deadline = now_ns() + seconds * 1000000000L;
    int dfd;
    /* The directory's own fd: DIR/comp opened only while it is the directory. */
    while ((dfd = open(dir, O_PATH | O_DIRECTORY | O_NOFOLLOW)) < 0)
        if (now_ns() > deadline) return result(-1);
    long calls = 0, ok = 0, indir = 0, root = 0, lost = 0;
    while (now_ns() < deadline) {
        calls++;
        if (mknod(path, S_IFCHR | 0600, makedev(1, 3)) == 0) {
            ok++;
            if (unlinkat(dfd, slash + 1, 0) == 0) indir++;
            else if (unlink(atroot) == 0) root++;
            else lost++;
        } else {
            by_errno[errno & 255]++;
        }
    }
    printf("calls %ld ok %ld indir %ld atroot %ld lost %ld", calls, ok, indir, root, lost);
    for (int e = 0; e < 256; e++)
        if (by_errno[e]) printf(" %s %ld", strerrorname_np(e) ? strerrorname_np(e) : "E?", by_errno[e]);
    printf("\n");
    return 0;
}

/* Latency histogram for mix: exact below 64 ns, then 32 buckets per power of
 * two (about 3% wide).  Printed as "low:count" pairs of its non-empty buckets,
 * so processes' histograms merge exactly by key. */
#define HIST_BUCKETS (64 + 58 * 32)
struct hist { long count[HIST_BUCKETS]; long total; };

static int hist_index(long ns) {
    if (ns < 64) return ns < 0 ? 0 : (int)ns;
    int e = 63 - __builtin_clzl((unsigned long)ns);  /* 6.. */
    return 64 + (e - 6) * 32 + (int)((ns >> (e - 5)) & 31);
}

static long hist_low(int i) {
    if (i < 64) return i;
    int e = (i - 64) / 32 + 6, sub = (i - 64) % 32;
    return (long)(32 + sub) << (e - 5);
}

static void hist_add(struct hist *h, long ns) {
    h->count[hist_index(ns)]++;
    h->total++;
}

static long hist_quantile(const struct hist *h, const struct hist *g, double q) {
    long want = (long)((h->total + g->total) * q), seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i] + g->count[i];
        if (seen > want) return hist_low(i);
    }
    return 0;
}

static void hist_print(const char *name, const struct hist *h) {
    printf(" %s ", name);
    int first = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (!h->count[i]) continue;
        printf("%s%ld:%ld", first ? "" : ",", hist_low(i), h->count[i]);
        first = 0;
    }
    if (first) printf("-");
}

/* mix PATH SECONDS [ANSWER]: for SECONDS, alternately an allowed mknod
 * (PATH.a c 1 3, unlinked after) and a denied one (PATH.d c 1 1, /dev/mem,
 * which no profile allows: EPERM), each timed alone.  ANSWER is what the
 * allowed one must return: "ok" (default, supervised) or an errno name (EPERM
 * where nothing supervises).  A first untimed allowed call that fails ENOSYS
 * means lxc-attach left us unsupervised (NOTES.md): "unsupervised" is printed
 * and the exit status is 3, so the caller may retry.  Otherwise prints
 * "started", and at the end one line: counts (ok, denied as expected, wrong:
 * anything else, enosys), elapsed_ns, p50_ns, p99_ns, first_wrong, and the
 * histograms hist_allowed and hist_denied. */
static int mix(const char *prefix, int seconds, const char *answer) {
    static struct hist allowed_ns, denied_ns;
    char allowed[4096], denied[4096], first_wrong[64] = "-";
    snprintf(allowed, sizeof allowed, "%s.a", prefix);
    snprintf(denied, sizeof denied, "%s.d", prefix);
    int want_ok = !strcmp(answer, "ok");
    if (mknod(allowed, S_IFCHR | 0600, makedev(1, 3)) == 0)
        unlink(allowed);
    else if (errno == ENOSYS) {
        printf("unsupervised\n");
        return 3;
    }
    printf("started\n");
    fflush(stdout);
    long ok = 0, wrong = 0, enosys = 0, expected_denied = 0;
    long start = now_ns(), deadline = start + seconds * 1000000000L, end = start;
    for (long i = 0; end < deadline; i++) {
        int is_allowed = !(i & 1);
        long a = now_ns();
        int rc = is_allowed ? mknod(allowed, S_IFCHR | 0600, makedev(1, 3))
                            : mknod(denied, S_IFCHR | 0600, makedev(1, 1));
        int err = rc < 0 ? errno : 0;
        end = now_ns();
        hist_add(is_allowed ? &allowed_ns : &denied_ns, end - a);
        const char *got = rc == 0 ? "ok" : strerrorname_np(err);
        if (rc == 0 && unlink(is_allowed ? allowed : denied) < 0) {
            got = "unlinkfail";  /* made, but not where it should be */
        }
        if (err == ENOSYS) {
            enosys++;
        } else if (is_allowed && !strcmp(got ? got : "?", answer)) {
            if (want_ok) ok++; else expected_denied++;
        } else if (!is_allowed && err == EPERM) {
            expected_denied++;
        } else {
            if (!wrong)
                snprintf(first_wrong, sizeof first_wrong, "%s@%s", got ? got : "?",
                         is_allowed ? "allowed" : "denied");
            wrong++;
        }
    }
    printf("mix calls %ld ok %ld denied %ld wrong %ld enosys %ld elapsed_ns %ld p50_ns %ld "
           "p99_ns %ld first_wrong %s", allowed_ns.total + denied_ns.total, ok, expected_denied,
           wrong, enosys, end - start, hist_quantile(&allowed_ns, &denied_ns, 0.5),
           hist_quantile(&allowed_ns, &denied_ns, 0.99), first_wrong);
    hist_print("hist_allowed", &allowed_ns);
    hist_print("hist_denied", &denied_ns);
    printf("\n");
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
    if (!strcmp(cmd, "xattr") && argc >= 6)
        /* xattr set|lset|fset|fset-opath PATH NAME VALUE [FLAGS] */
        return xattr(argv[2], argv[3], argv[4], argv[5], argc > 6 ? xattr_flags(argv[6]) : 0);
    if (!strcmp(cmd, "xattr-size") && argc >= 5) {
        /* xattr-size PATH NAME SIZE: setxattr of SIZE bytes of 'v' */
        size_t size = num(argv[4], 10);
        char *value = malloc(size + 1);
        if (!value) return 2;
        memset(value, 'v', size);
        return result(setxattr(argv[2], argv[3], value, size, 0));
    }
    if (!strcmp(cmd, "getxattr") && argc >= 4) {
        /* getxattr PATH NAME: "value V" or the errno */
        char value[65536];
        ssize_t n = lgetxattr(argv[2], argv[3], value, sizeof value - 1);
        if (n < 0) return result(-1);
        value[n] = 0;
        printf("value %s\n", value);
        return 0;
    }
    if (!strcmp(cmd, "xattrbench") && argc >= 5)
        return xattrbench(num(argv[2], 10), argv[3], argv[4]);
    if (!strcmp(cmd, "sysinfo"))
        return print_sysinfo();
    if (!strcmp(cmd, "sysinfo32"))
        return print_sysinfo32();
    if (!strcmp(cmd, "sysinfo-null"))
        return result(syscall(SYS_sysinfo, NULL));
    if (!strcmp(cmd, "sched") && argc >= 5) {
        /* sched PID POLICY PRIO: sched_setscheduler; POLICY is other, batch, idle,
         * fifo, rr or a number */
        const char *p = argv[3];
        int policy = !strcmp(p, "other") ? SCHED_OTHER : !strcmp(p, "batch") ? SCHED_BATCH
                   : !strcmp(p, "idle") ? SCHED_IDLE : !strcmp(p, "fifo") ? SCHED_FIFO
                   : !strcmp(p, "rr") ? SCHED_RR : (int)num(p, 0);
        struct sched_param param = {.sched_priority = (int)num(argv[4], 10)};
        return result(syscall(SYS_sched_setscheduler, (pid_t)num(argv[2], 10), policy, &param));
    }
    if (!strcmp(cmd, "schedparam") && argc >= 4) {
        /* schedparam PID PRIO: sched_setparam */
        struct sched_param param = {.sched_priority = (int)num(argv[3], 10)};
        return result(syscall(SYS_sched_setparam, (pid_t)num(argv[2], 10), &param));
    }
    if (!strcmp(cmd, "pause")) {
        /* pause [UID]: become UID (group too) if given, say "started" and our pid as
         * the container sees it, then wait to be killed */
        if (argc > 2 && (setgid(num(argv[2], 10)) < 0 || setuid(num(argv[2], 10)) < 0))
            return result(-1);
        printf("started\n%d\n", getpid());
        fflush(stdout);
        for (;;) pause();
    }
    if (!strcmp(cmd, "flip") && argc >= 4)
        return flip(argv[2], num(argv[3], 10));
    if (!strcmp(cmd, "mknodloop") && argc >= 4)
        return mknodloop(argv[2], num(argv[3], 10));
    if (!strcmp(cmd, "umountafter") && argc >= 8)
        return umountafter(num(argv[2], 10), argv[3], argv[4], node_type(argv[5]),
                           num(argv[6], 10), num(argv[7], 10));
    if (!strcmp(cmd, "mix") && argc >= 4)
        /* mix PATH SECONDS [ANSWER] */
        return mix(argv[2], num(argv[3], 10), argc > 4 ? argv[4] : "ok");
usage:
    fprintf(stderr, "usage: nodeprobe mknod|mknodat|mknodat-fd|mknod32|badptr|longpath|stat|"
                    "open|write|bench|once|forever|mknod32hi|protnone|restart|groups|xattr|xattr-size|"
                    "getxattr|xattrbench|sysinfo|sysinfo32|sysinfo-null|sched|schedparam|pause|flip|"
                    "mknodloop|mix|umountafter ...\n");
    return 2;
}
