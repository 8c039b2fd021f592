/* mountprobe: makes exact mount calls inside a test container and prints the result.
 *
 * busybox's mount(8) goes through mount(2) too, but tests need raw control:
 * the flags as numbers, NULL data, the new API's entry points that must stay
 * the kernel's (fsopen of tmpfs, openat2), and a mount made from a nested
 * mount namespace.  Every command prints "ok" or the errno name and exits 0;
 * exit 2 means it was called wrongly.  "-" stands for a NULL string.
 *
 * String arguments of mount may also be built in memory (hostile callers):
 *   @bad        an address on a page that cannot be read
 *   @noz:TEXT   TEXT with no NUL, its last byte just before an unreadable page
 *   @page:TEXT  a page-aligned page of commas ending in TEXT, no NUL, then an
 *               unreadable page
 *
 * "seq CMD ARGS ; CMD ARGS ; ..." runs several commands in one process (one
 * line each), so that what one sets up (an fd at a fixed number, the cwd, the
 * credentials, a private mount namespace) is seen by the next:
 *   openfd PATH FD      an O_PATH fd of PATH, moved to FD
 *   chdir PATH
 *   as UID CAPS         setresuid/setresgid to UID, no groups, the capability
 *                       mask CAPS (hex) effective and permitted, nothing else
 *   private             a new mount namespace, everything made private
 *   shared PATH         the mount at PATH made shared (a peer group of its own)
 *   newpid              the rest as pid 2 of a new pid namespace (its pid 1 waits)
 *   opts TGT WORD...    which WORDs are in the mount options and in the
 *                       superblock options of the top mount at TGT (mountinfo):
 *                       "mnt=w1,w2 sb=w3", or "not-mounted"
 *   mounts PREFIX       how many mounts have a mount point under PREFIX
 * and "race" (below) races mounts against a symlink that flips.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static int result(long rc) {
    if (rc < 0)
        printf("%s\n", strerrorname_np(errno));
    else
        printf("ok\n");
    return 0;
}

/* LEN bytes of memory ending exactly where an unreadable page starts. */
static char *before_guard(size_t len, int page_aligned) {
    size_t pages = (len + PAGE - 1) / PAGE + 1;
    char *base = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (base == MAP_FAILED) return NULL;
    char *guard = base + (pages - 1) * PAGE;
    if (mprotect(guard, PAGE, PROT_NONE) < 0) return NULL;
    return page_aligned ? guard - PAGE : guard - len;
}

/* A string argument: "-" NULL, the @ forms above, or the text itself. */
static const char *built(const char *s) {
    if (strcmp(s, "-") == 0) return NULL;
    if (strcmp(s, "@bad") == 0) return before_guard(0, 0);
    if (strncmp(s, "@noz:", 5) == 0) {
        size_t len = strlen(s + 5);
        char *p = before_guard(len, 0);
        if (p) memcpy(p, s + 5, len);
        return p;
    }
    if (strncmp(s, "@page:", 6) == 0) {
        size_t len = strlen(s + 6);
        char *p = len <= PAGE ? before_guard(PAGE, 1) : NULL;
        if (p) {
            memset(p, ',', PAGE);
            memcpy(p + PAGE - len, s + 6, len);
        }
        return p;
    }
    return s;
}

/* Whether PATH is a mount point in the mount table of pid 1 (of this pid namespace). */
static int in_init_table(const char *path) {
    FILE *f = fopen("/proc/1/mountinfo", "r");
    char line[4096];
    int found = 0;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        char point[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 && strcmp(point, path) == 0)
            found = 1;
    }
    fclose(f);
    return found;
}

static int has_word(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, word, n) == 0) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

/* opts TGT WORD...: the asked words in the top mount's options at TGT. */
static int opts(const char *target, char **words, int count) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    static char line[8192], mnt[4096], sb[4096];
    int found = 0;
    if (!f) return result(-1);
    while (fgets(line, sizeof line, f)) {
        char point[4096], options[4096], super[4096];
        char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %*s %4095s %4095s", point, options) != 2 ||
            sscanf(dash, " - %*s %*s %4095s", super) != 1 || strcmp(point, target) != 0)
            continue;
        found = 1;  /* the last one listed is the top one */
        strcpy(mnt, options);
        strcpy(sb, super);
    }
    fclose(f);
    if (!found) {
        printf("not-mounted\n");
        return 0;
    }
    printf("mnt=");
    for (int i = 0, first = 1; i < count; i++)
        if (has_word(mnt, words[i])) { printf("%s%s", first ? "" : ",", words[i]); first = 0; }
    printf(" sb=");
    for (int i = 0, first = 1; i < count; i++)
        if (has_word(sb, words[i])) { printf("%s%s", first ? "" : ",", words[i]); first = 0; }
    printf("\n");
    return 0;
}

static int mounts_under(const char *prefix) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192], point[4096];
    int n = 0;
    if (!f) return result(-1);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 &&
            strncmp(point, prefix, strlen(prefix)) == 0)
            n++;
    fclose(f);
    printf("%d\n", n);
    return 0;
}

static int become(unsigned id, unsigned long long caps) {
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {
        {(unsigned)caps, (unsigned)caps, 0}, {(unsigned)(caps >> 32), (unsigned)(caps >> 32), 0}};
    if (prctl(PR_SET_KEEPCAPS, 1) < 0 || setgroups(0, NULL) < 0 || setresgid(id, id, id) < 0 ||
        setresuid(id, id, id) < 0 || syscall(SYS_capset, &head, data) < 0)
        return result(-1);
    return result(0);
}

/* race LINK A B N SRC TYPE: a thread flips LINK between pointing to A and to B
 * while this one mounts SRC on LINK N times (umounting A after each success);
 * "race SRCLINK ..." the same with the source: mount LINK on TGT, umount TGT.
 * Prints the distinct answers, sorted, and "stray" when a mount that
 * succeeded was not at A (resp. TGT). */
static const char *flip_link, *flip_a, *flip_b;
static volatile int flipping;

static void *flipper(void *unused) {
    char tmp[4200];
    (void)unused;
    snprintf(tmp, sizeof tmp, "%s.flip", flip_link);
    for (unsigned i = 0; flipping; i++) {
        unlink(tmp);
        if (symlink(i % 2 ? flip_a : flip_b, tmp) == 0) rename(tmp, flip_link);
    }
    unlink(tmp);
    return NULL;
}

static int race(int on_source, char **a) {
    const char *src = a[4], *type = a[5];
    int n = atoi(a[3]), seen_ok = 0, stray = 0, seen[200] = {0};
    pthread_t thread;
    flip_link = a[0]; flip_a = a[1]; flip_b = a[2];
    flipping = 1;
    unlink(flip_link);
    if (symlink(flip_a, flip_link) < 0 || pthread_create(&thread, NULL, flipper, NULL) != 0)
        return result(-1);
    for (int i = 0; i < n; i++) {
        long rc = on_source ? mount(flip_link, src, type, 0, NULL)
                            : mount(src, flip_link, type, 0, NULL);
        if (rc == 0) {
            seen_ok = 1;
            if (umount(on_source ? src : flip_a) < 0) stray = 1;
        } else if (errno < 200) {
            seen[errno] = 1;
        }
    }
    flipping = 0;
    pthread_join(thread, NULL);
    /* sorted by name: errno names are upper case, "ok" and "stray" lower */
    const char *names[200];
    int count = 0;
    for (int e = 1; e < 200; e++)
        if (seen[e]) names[count++] = strerrorname_np(e);
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++)
            if (strcmp(names[j], names[i]) < 0) { const char *t = names[i]; names[i] = names[j]; names[j] = t; }
    for (int i = 0; i < count; i++) printf("%s ", names[i]);
    printf("%s%s\n", seen_ok ? "ok" : "", stray ? " stray" : "");
    return 0;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* bench N SRC TGT TYPE FLAGS: N mounts, each unmounted after it succeeds (the
 * unmount not timed); prints "calls N ok K median_ns M p99_ns P". */
static int bench(int n, const char *src, const char *tgt, const char *type,
                 unsigned long flags) {
    long *ns = calloc(n, sizeof(long));
    int ok = 0;
    if (!ns || n < 1) return 2;
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = mount(src, tgt, type, flags, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
        if (rc == 0) {
            ok++;
            umount(tgt);
        }
    }
    qsort(ns, n, sizeof(long), cmp_long);
    printf("calls %d ok %d median_ns %ld p99_ns %ld\n", n, ok, ns[n / 2], ns[(n * 99) / 100]);
    return 0;
}

/* One command at argv[0..argc): its status (0, or 2 for wrong usage). */
static int command(int argc, char **argv) {
    if (argc < 1) return 2;
    const char *cmd = argv[0];
    if (strcmp(cmd, "mount") == 0 && argc == 6)  /* mount SRC TGT TYPE FLAGS DATA */
        return result(mount(built(argv[1]), built(argv[2]), built(argv[3]),
                            strtoull(argv[4], NULL, 0), built(argv[5])));
    if (strcmp(cmd, "bench") == 0 && argc == 6)  /* bench N SRC TGT TYPE FLAGS */
        return bench(atoi(argv[1]), argv[2], argv[3], argv[4], strtoul(argv[5], NULL, 0));
    if (strcmp(cmd, "umount") == 0 && argc == 2)
        return result(umount(argv[1]));
    if (strcmp(cmd, "umountl") == 0 && argc == 2)
        return result(umount2(argv[1], MNT_DETACH));
    if (strcmp(cmd, "fsopen") == 0 && argc == 2) {
        long fd = syscall(SYS_fsopen, argv[1], 0);
        if (fd >= 0) close(fd);
        return result(fd);
    }
    if (strcmp(cmd, "openat2") == 0 && argc == 2) {
        struct open_how how = {.flags = O_RDONLY, .resolve = RESOLVE_IN_ROOT};
        long fd = syscall(SYS_openat2, AT_FDCWD, argv[1], &how, sizeof how);
        if (fd >= 0) close(fd);
        return result(fd);
    }
    if (strcmp(cmd, "setattr") == 0 && argc == 4) {
        /* setattr TGT SET CLR: mount_setattr(2) of the mount at TGT, attributes as numbers */
        struct { unsigned long long attr_set, attr_clr, propagation, userns_fd; } attr = {
            strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0), 0, 0};
        return result(syscall(442 /* mount_setattr */, AT_FDCWD, argv[1], 0, &attr,
                              sizeof attr));
    }
    if (strcmp(cmd, "nested") == 0 && argc == 6) {
        /* nested SRC TGT TYPE FLAGS FILE: mount in a new mount namespace, then
         * say whether FILE (under TGT) is seen here and TGT is absent from
         * the container's init table: "ok seen-here absent-there". */
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            return result(-1);
        if (mount(argv[1], argv[2], argv[3], strtoul(argv[4], NULL, 0), NULL) < 0)
            return result(-1);
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", argv[2], argv[5]);
        printf("ok %s %s\n", access(file, F_OK) == 0 ? "seen-here" : "unseen-here",
               in_init_table(argv[2]) ? "present-there" : "absent-there");
        return 0;
    }
    if (strcmp(cmd, "openfd") == 0 && argc == 3) {
        int fd = open(argv[1], O_PATH), want = atoi(argv[2]);
        if (fd < 0) return result(-1);
        if (fd != want && (dup2(fd, want) < 0 || close(fd) < 0)) return result(-1);
        return result(0);
    }
    if (strcmp(cmd, "chdir") == 0 && argc == 2)
        return result(chdir(argv[1]));
    if (strcmp(cmd, "as") == 0 && argc == 3)
        return become(strtoul(argv[1], NULL, 0), strtoull(argv[2], NULL, 16));
    if (strcmp(cmd, "private") == 0 && argc == 1) {
        if (unshare(CLONE_NEWNS) < 0) return result(-1);
        return result(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    }
    if (strcmp(cmd, "shared") == 0 && argc == 2)
        return result(mount(NULL, argv[1], NULL, MS_SHARED, NULL));
    if (strcmp(cmd, "newpid") == 0 && argc == 1) {
        /* newpid: the rest runs as pid 2 of a new pid namespace whose pid 1, root
         * like a container's init, only waits; /proc shows that namespace. */
        int status = 0;
        if (unshare(CLONE_NEWPID) < 0) return result(-1);
        pid_t init = fork();
        if (init < 0) return result(-1);
        if (init > 0) {
            waitpid(init, &status, 0);
            exit(WIFEXITED(status) ? WEXITSTATUS(status) : 2);
        }
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            return result(-1);
        pid_t rest = fork();
        if (rest < 0) return result(-1);
        if (rest > 0) {
            waitpid(rest, &status, 0);
            exit(WIFEXITED(status) ? WEXITSTATUS(status) : 2);
        }
        return result(0);
    }
    if (strcmp(cmd, "opts") == 0 && argc >= 2)
        return opts(argv[1], argv + 2, argc - 2);
    if (strcmp(cmd, "mounts") == 0 && argc == 2)
        return mounts_under(argv[1]);
    if (strcmp(cmd, "race") == 0 && argc == 8 && strcmp(argv[1], "target") == 0)
        return race(0, argv + 2);
    if (strcmp(cmd, "race") == 0 && argc == 8 && strcmp(argv[1], "source") == 0)
        return race(1, argv + 2);
    fprintf(stderr, "unknown command or wrong arguments\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (strcmp(argv[1], "seq") != 0)
        return command(argc - 1, argv + 1);
    for (int start = 2; start < argc;) {
        int end = start;
        while (end < argc && strcmp(argv[end], ";") != 0) end++;
        fflush(stdout);
        if (command(end - start, argv + start) != 0) return 2;
        start = end + 1;
    }
    return 0;
}
