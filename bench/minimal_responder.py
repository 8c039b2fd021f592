"""The benchmark's baseline: the least a proxy can do for LXC.

Answers every datagram on LXC's seccomp proxy socket with EPERM, with no
parsing beyond the fixed header, closing the fds it receives.  Its latency is
the price of LXC's hop itself (monitor, socket, wakeups), which no
supervisor can avoid; lxc-notify's numbers are reported as ratios to it.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import sys
import threading

_RESP = struct.Struct("=QqiI")


def serve_connection(conn: socket.socket) -> None:
    fd_size = array.array("i").itemsize
    with conn:
        while True:
            data, anc, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(8 * fd_size))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in array.array("i", payload[: len(payload) - len(payload) % fd_size]):
                        os.close(fd)
            if not data:
                return
            notif_id = struct.unpack_from("=Q", data, 32)[0]
            conn.send(data[:112] + _RESP.pack(notif_id, 0, -errno.EPERM, 0))


def main(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
