/* bpfprobe: makes exact bpf(2) calls for cgroup device programs and prints each result.
 *
 * Every argument word is a command, run in order in one process (a program's
 * fd loaded by one is attached by the next); each prints one line: "ok",
 * "ok N" (a number the call returned or counted), or the errno's name.  Exit
 * 0, or 2 when called wrongly.  The same binary runs inside a test container
 * and on the host as root: the host's answers are the kernel's own.
 *
 *   load MAJ MIN       load a device program refusing c MAJ:MIN (it is "the program")
 *   loadlog MAJ MIN    the same with a verifier log: "ok LOG" (the log's first line)
 *   loadtype TYPE      load "return 1" as program type TYPE (closed again)
 *   attach DIR FLAGS   attach the program to the cgroup DIR with FLAGS (hex)
 *   replace DIR        attach a new program (refusing c 1:8) with BPF_F_ALLOW_MULTI |
 *                      BPF_F_REPLACE in place of the program, which it becomes
 *   detach DIR         detach the program from DIR
 *   link DIR           link the program to DIR (BPF_LINK_CREATE; the link lives
 *                      as long as this process)
 *   as UID             setresgid/setresuid to UID: every capability gone
 *   wait               print "waiting", then read a line from stdin
 *   open PATH          open PATH read-only
 *   join DIR           move this process into the cgroup DIR
 *   hostile CASE DIR   a bpf call with a hostile attr (see hostile() below)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096
#ifndef BPF_F_REPLACE
#define BPF_F_REPLACE (1U << 2)
#endif

static int prog = -1;
static char log_buf[65536];

static long sys_bpf(long cmd, void *attr, unsigned long size) {
    return syscall(SYS_bpf, cmd, attr, size);
}

static void result(long rc) {
    if (rc < 0)
        printf("%s\n", strerrorname_np(errno));
    else if (rc > 0)
        printf("ok %ld\n", rc);
    else
        printf("ok\n");
    fflush(stdout);
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    struct bpf_insn i = {.code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm};
    return i;
}

/* Refuses every access to c MAJ:MIN, allows the rest (struct bpf_cgroup_dev_ctx:
 * access_type (low 16 bits: 1 block, 2 char), major, minor). */
static int device_program(struct bpf_insn *code, int major, int minor) {
    int n = 0;
    code[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, 2, 1, 0, 0);
    code[n++] = insn(BPF_ALU64 | BPF_AND | BPF_K, 2, 0, 0, 0xffff);
    code[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, 3, 1, 4, 0);
    code[n++] = insn(BPF_LDX | BPF_MEM | BPF_W, 4, 1, 8, 0);
    code[n++] = insn(BPF_JMP | BPF_JNE | BPF_K, 2, 0, 4, 2);
    code[n++] = insn(BPF_JMP | BPF_JNE | BPF_K, 3, 0, 3, major);
    code[n++] = insn(BPF_JMP | BPF_JNE | BPF_K, 4, 0, 2, minor);
    code[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0);
    code[n++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    code[n++] = insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1);
    code[n++] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    return n;
}

static long load(int type, struct bpf_insn *code, int count, int with_log) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = type;
    attr.insn_cnt = count;
    attr.insns = (uintptr_t)code;
    attr.license = (uintptr_t)"GPL";
    if (with_log) {
        attr.log_level = 1;
        attr.log_size = sizeof(log_buf);
        attr.log_buf = (uintptr_t)log_buf;
    }
    return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
}

static long attach(int cmd, const char *dir, int fd, unsigned flags, int replace) {
    int cgroup = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup < 0)
        return -1;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = cgroup;
    attr.attach_bpf_fd = fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = flags;
    attr.replace_bpf_fd = replace;
    long rc = sys_bpf(cmd, &attr, sizeof(attr));
    int saved = errno;
    close(cgroup);
    errno = saved;
    return rc;
}

/* A page nobody may read. */
static void *bad_page(void) {
    void *page = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return page;
}

/* Hostile attrs, each printing the call's answer:
 *   load-attr-bad, attach-attr-bad   the attr on an unreadable page
 *   load-huge, attach-huge           a size of 1 MiB
 *   load-tail, attach-tail           a page-sized attr with a byte set far past its fields
 *   attach-high-cmd                  cmd with bits above its 32 (the kernel reads an int)
 *   insns-bad, license-bad           the instructions, the license on an unreadable page
 *   insn-cnt-huge                    0x7fffffff instructions
 *   log-bad, log-size-huge           an unreadable log buffer; a log size above 1 GiB
 *   target-fd-bad, prog-fd-bad       an fd number nothing is open on
 *   prog-not-bpf, target-not-cgroup  /dev/null as the program; / as the cgroup
 *   flags-bad                        attach flags the kernel does not know
 *   detach-no-prog                   detach from DIR with no program fd */
static long hostile(const char *what, const char *dir) {
    static struct bpf_insn code[16];
    int count = device_program(code, 1, 3);
    static char big[PAGE];
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insn_cnt = count;
    attr.insns = (uintptr_t)code;
    attr.license = (uintptr_t)"GPL";
    if (!strcmp(what, "load-attr-bad"))
        return sys_bpf(BPF_PROG_LOAD, bad_page(), sizeof(attr));
    if (!strcmp(what, "load-huge"))
        return sys_bpf(BPF_PROG_LOAD, &attr, 1 << 20);
    if (!strcmp(what, "load-tail")) {
        memcpy(big, &attr, sizeof(attr));
        big[4000] = 1;
        return sys_bpf(BPF_PROG_LOAD, big, sizeof(big));
    }
    if (!strcmp(what, "insns-bad")) {
        attr.insns = (uintptr_t)bad_page();
        return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    if (!strcmp(what, "license-bad")) {
        attr.license = (uintptr_t)bad_page();
        return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    if (!strcmp(what, "insn-cnt-huge")) {
        attr.insn_cnt = 0x7fffffff;
        return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    if (!strcmp(what, "log-bad")) {
        attr.log_level = 1;
        attr.log_size = PAGE;
        attr.log_buf = (uintptr_t)bad_page();
        return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    if (!strcmp(what, "log-size-huge")) {
        attr.log_level = 1;
        attr.log_size = 0xffffffffU;
        attr.log_buf = (uintptr_t)log_buf;
        return sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
    }
    int cgroup = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup < 0)
        return -1;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = cgroup;
    attr.attach_bpf_fd = prog;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = BPF_F_ALLOW_MULTI;
    long cmd = BPF_PROG_ATTACH;
    unsigned long size = sizeof(attr);
    void *where = &attr;
    if (!strcmp(what, "attach-attr-bad"))
        where = bad_page();
    else if (!strcmp(what, "attach-huge"))
        size = 1 << 20;
    else if (!strcmp(what, "attach-tail")) {
        memset(big, 0, sizeof(big));
        memcpy(big, &attr, sizeof(attr));
        big[4000] = 1;
        where = big;
        size = sizeof(big);
    } else if (!strcmp(what, "attach-high-cmd"))
        cmd |= 0x100000000L;
    else if (!strcmp(what, "target-fd-bad"))
        attr.target_fd = 999;
    else if (!strcmp(what, "prog-fd-bad"))
        attr.attach_bpf_fd = 999;
    else if (!strcmp(what, "prog-not-bpf"))
        attr.attach_bpf_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    else if (!strcmp(what, "target-not-cgroup"))
        attr.target_fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    else if (!strcmp(what, "flags-bad"))
        attr.attach_flags = 0x80;
    else if (!strcmp(what, "detach-no-prog")) {
        cmd = BPF_PROG_DETACH;
        attr.attach_flags = 0;
        attr.attach_bpf_fd = 999;
    } else {
        fprintf(stderr, "unknown hostile case %s\n", what);
        exit(2);
    }
    long rc = sys_bpf(cmd, where, size);
    int saved = errno;
    close(cgroup);
    errno = saved;
    return rc;
}

static int need(int argc, int i, int n) {
    if (i + n >= argc) {
        fprintf(stderr, "missing arguments\n");
        exit(2);
    }
    return 1;
}

int main(int argc, char **argv) {
    static struct bpf_insn code[16];
    for (int i = 1; i < argc; i++) {
        const char *cmd = argv[i];
        if (!strcmp(cmd, "load") || !strcmp(cmd, "loadlog")) {
            need(argc, i, 2);
            int count = device_program(code, atoi(argv[i + 1]), atoi(argv[i + 2]));
            int with_log = !strcmp(cmd, "loadlog");
            log_buf[0] = 0;
            long fd = load(BPF_PROG_TYPE_CGROUP_DEVICE, code, count, with_log);
            if (fd >= 0) {
                if (prog >= 0)
                    close(prog);
                prog = fd;
                if (with_log)
                    printf("ok %.*s\n", (int)strcspn(log_buf, "\n"), log_buf);
                else
                    printf("ok\n");
                fflush(stdout);
            } else {
                result(fd);
            }
            i += 2;
        } else if (!strcmp(cmd, "loadtype")) {
            need(argc, i, 1);
            code[0] = insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 1);
            code[1] = insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
            long fd = load(atoi(argv[++i]), code, 2, 0);
            result(fd < 0 ? fd : 0);
            if (fd >= 0)
                close(fd);
        } else if (!strcmp(cmd, "attach")) {
            need(argc, i, 2);
            result(attach(BPF_PROG_ATTACH, argv[i + 1], prog, strtoul(argv[i + 2], NULL, 16),
                          0));
            i += 2;
        } else if (!strcmp(cmd, "replace")) {
            need(argc, i, 1);
            int count = device_program(code, 1, 8);
            long fd = load(BPF_PROG_TYPE_CGROUP_DEVICE, code, count, 0);
            long rc = fd < 0 ? fd : attach(BPF_PROG_ATTACH, argv[++i], fd,
                                           BPF_F_ALLOW_MULTI | BPF_F_REPLACE, prog);
            if (rc >= 0) {
                close(prog);
                prog = fd;
            }
            result(rc);
        } else if (!strcmp(cmd, "detach")) {
            need(argc, i, 1);
            result(attach(BPF_PROG_DETACH, argv[++i], prog, 0, 0));
        } else if (!strcmp(cmd, "link")) {
            need(argc, i, 1);
            int cgroup = open(argv[++i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            union bpf_attr attr;
            memset(&attr, 0, sizeof(attr));
            attr.link_create.prog_fd = prog;
            attr.link_create.target_fd = cgroup;
            attr.link_create.attach_type = BPF_CGROUP_DEVICE;
            long rc = sys_bpf(BPF_LINK_CREATE, &attr, sizeof(attr));
            result(rc < 0 ? rc : 0);  /* the link stays open */
        } else if (!strcmp(cmd, "as")) {
            need(argc, i, 1);
            int uid = atoi(argv[++i]);
            if (setresgid(uid, uid, uid) || setresuid(uid, uid, uid)) {
                perror("as");
                return 2;
            }
            printf("ok\n");
            fflush(stdout);
        } else if (!strcmp(cmd, "wait")) {
            char line[64];
            printf("waiting\n");
            fflush(stdout);
            if (!fgets(line, sizeof(line), stdin))
                return 2;
        } else if (!strcmp(cmd, "open")) {
            need(argc, i, 1);
            int fd = open(argv[++i], O_RDONLY | O_CLOEXEC);
            result(fd < 0 ? fd : 0);
            if (fd >= 0)
                close(fd);
        } else if (!strcmp(cmd, "join")) {
            need(argc, i, 1);
            char path[4096], pid[32];
            snprintf(path, sizeof(path), "%s/cgroup.procs", argv[++i]);
            int fd = open(path, O_WRONLY | O_CLOEXEC);
            long rc = fd;
            if (fd >= 0) {
                int len = snprintf(pid, sizeof(pid), "%d\n", getpid());
                rc = write(fd, pid, len);
                rc = rc < 0 ? rc : 0;
                close(fd);
            }
            result(rc);
        } else if (!strcmp(cmd, "hostile")) {
            need(argc, i, 2);
            long rc = hostile(argv[i + 1], argv[i + 2]);
            result(rc < 0 ? rc : 0);
            i += 2;
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            return 2;
        }
    }
    return 0;
}
