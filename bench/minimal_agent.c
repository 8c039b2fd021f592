/* The OCI benchmark's baseline: the least a seccomp agent can do.
 *
 * Accepts on the unix stream socket argv[1]; for each connection (one per
 * filter a runtime installs: the container's and each exec's) takes the
 * first fd sent with it, which runc sends as the listener, and forks a
 * child that answers every notification EPERM without looking, until the
 * listener reports POLLHUP.  Same-CPU wake-ups are asked for, as the daemon
 * does.  Its latency is the kernel's round trip itself; lxc-notify's OCI
 * numbers are reported as ratios to it. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif

static void serve(int listener) {
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, 1UL); /* SYNC_WAKE_UP where known */
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    for (;;) {
        struct pollfd p = {listener, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 || (p.revents & (POLLHUP | POLLERR))) return;
        memset(&req, 0, sizeof req);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) continue; /* ENOENT: gone */
        resp.id = req.id;
        resp.val = 0;
        resp.error = -EPERM;
        resp.flags = 0;
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp); /* ENOENT: gone, normal */
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    int server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    unlink(argv[1]);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 16) < 0) {
        perror("bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int conn = accept4(server, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) continue;
        char data[65536], control[CMSG_SPACE(16 * sizeof(int))];
        struct iovec iov = {data, sizeof data};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
        int listener = -1;
        if (recvmsg(conn, &msg, MSG_CMSG_CLOEXEC) > 0) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                    memcpy(&listener, CMSG_DATA(c), sizeof listener);
        }
        close(conn);
        if (listener < 0) continue;
        if (fork() == 0) {
            close(server);
            serve(listener);
            _exit(0);
        }
        close(listener);
    }
}
