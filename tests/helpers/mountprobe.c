/* mountprobe: makes exact mount calls inside a test container and prints the result.
 *
 * busybox's mount(8) goes through mount(2) too, but tests need raw control:
 * the flags as numbers, NULL data, the new API's entry points that must stay
 * the kernel's (fsopen of tmpfs, openat2), and a mount made from a nested
 * mount namespace.  Every command prints "ok" or the errno name and exits 0;
 * exit 2 means it was called wrongly.  "-" stands for a NULL string.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

static int result(long rc) {
    if (rc < 0)
        printf("%s\n", strerrorname_np(errno));
    else
        printf("ok\n");
    return 0;
}

static const char *arg(const char *s) { return strcmp(s, "-") == 0 ? NULL : s; }

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

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *cmd = argv[1];
    if (strcmp(cmd, "mount") == 0 && argc == 7)  /* mount SRC TGT TYPE FLAGS DATA */
        return result(mount(arg(argv[2]), argv[3], arg(argv[4]), strtoul(argv[5], NULL, 0),
                            arg(argv[6])));
    if (strcmp(cmd, "umount") == 0 && argc == 3)
        return result(umount(argv[2]));
    if (strcmp(cmd, "fsopen") == 0 && argc == 3) {
        long fd = syscall(SYS_fsopen, argv[2], 0);
        if (fd >= 0) close(fd);
        return result(fd);
    }
    if (strcmp(cmd, "openat2") == 0 && argc == 3) {
        struct open_how how = {.flags = O_RDONLY, .resolve = RESOLVE_IN_ROOT};
        long fd = syscall(SYS_openat2, AT_FDCWD, argv[2], &how, sizeof how);
        if (fd >= 0) close(fd);
        return result(fd);
    }
    if (strcmp(cmd, "setattr") == 0 && argc == 5) {
        /* setattr TGT SET CLR: mount_setattr(2) of the mount at TGT, attributes as numbers */
        struct { unsigned long long attr_set, attr_clr, propagation, userns_fd; } attr = {
            strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0), 0, 0};
        return result(syscall(442 /* mount_setattr */, AT_FDCWD, argv[2], 0, &attr,
                              sizeof attr));
    }
    if (strcmp(cmd, "nested") == 0 && argc == 7) {
        /* nested SRC TGT TYPE FLAGS FILE: mount in a new mount namespace, then
         * say whether FILE (under TGT) is seen here and TGT is absent from
         * the container's init table: "ok seen-here absent-there". */
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
            return result(-1);
        if (mount(argv[2], argv[3], argv[4], strtoul(argv[5], NULL, 0), NULL) < 0)
            return result(-1);
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", argv[3], argv[6]);
        printf("ok %s %s\n", access(file, F_OK) == 0 ? "seen-here" : "unseen-here",
               in_init_table(argv[3]) ? "present-there" : "absent-there");
        return 0;
    }
    fprintf(stderr, "unknown command or wrong arguments\n");
    return 2;
}
