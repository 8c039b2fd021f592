"""LXC's seccomp proxy protocol (``lxc.seccomp.notify.proxy``), as LXC 5.0 speaks it.

Per notification the container's monitor sends one SOCK_SEQPACKET datagram in
native byte order::

    struct seccomp_notify_proxy_msg {
        __u64 __reserved;                  /*   0: always 0            */
        pid_t monitor_pid;                 /*   8: host pid            */
        pid_t init_pid;                    /*  12: container init      */
        struct seccomp_notif_sizes sizes;  /*  16: 3 x __u16, +2 pad   */
        __u64 cookie_len;                  /*  24                      */
        /* struct seccomp_notif      (80)     32                      */
        /* struct seccomp_notif_resp (24)    112: id filled in        */
        /* char cookie[cookie_len]           136: no NUL              */
    };

with three fds attached: ``/proc/PID`` (a directory fd), ``/proc/PID/mem``
(read-write) and the seccomp listener.  The answer is the first 136 bytes
with the response filled in; LXC then answers the kernel itself.  A reply of
any other length makes LXC answer ENOSYS, which is what we send for a
datagram we cannot trust.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import ProtocolError
from ..kernel import NotifSizes

_HEADER_AND_NOTIF: Final = struct.Struct("=QiiHHHxxQ" "QIIiIQ6Q")
_RESP: Final = struct.Struct("=QqiI")
NOTIF_OFFSET: Final = 32
RESP_OFFSET: Final = 112
REPLY_SIZE: Final = 136
MAX_COOKIE: Final = 1024
FDS_PER_MESSAGE: Final = 3

# A reply LXC cannot parse; it then answers the caller ENOSYS (seen with 5.0.2).
UNPARSEABLE_REPLY: Final = b"\0"


@dataclass(frozen=True, slots=True)
class Notification:
    """One seccomp notification as LXC forwarded it."""

    notif_id: int
    pid: int  # the calling *thread*'s id on the host
    flags: int
    nr: int
    arch: int
    instruction_pointer: int
    args: tuple[int, int, int, int, int, int]
    monitor_pid: int
    init_pid: int
    cookie: bytes
    raw_head: bytes  # header + notif, echoed back in the reply

    def reply(self, *, error: int = 0, val: int = 0, flags: int = 0) -> bytes:
        """The datagram that answers this notification.  ``error`` is a positive errno."""
        return self.raw_head + _RESP.pack(self.notif_id, val, -error, flags)


def parse(datagram: bytes, fd_count: int, sizes: NotifSizes) -> Notification:
    """Validate and decode one datagram; ProtocolError says what is wrong with it."""
    if len(datagram) < REPLY_SIZE:
        raise ProtocolError(f"datagram of {len(datagram)} bytes, need at least {REPLY_SIZE}")
    (reserved, monitor_pid, init_pid, size_notif, size_resp, size_data, cookie_len,
     notif_id, pid, flags, nr, arch, ip, a0, a1, a2, a3, a4, a5) = _HEADER_AND_NOTIF.unpack_from(
        datagram)
    if reserved != 0:
        raise ProtocolError(f"reserved field is {reserved:#x}, not 0")
    if (size_notif, size_resp, size_data) != (
            sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data):
        raise ProtocolError(
            f"struct sizes {size_notif}/{size_resp}/{size_data} differ from the kernel's "
            f"{sizes.seccomp_notif}/{sizes.seccomp_notif_resp}/{sizes.seccomp_data}")
    if cookie_len > MAX_COOKIE or len(datagram) != REPLY_SIZE + cookie_len:
        raise ProtocolError(f"cookie length {cookie_len} does not match a {len(datagram)}-byte "
                            "datagram")
    if fd_count != FDS_PER_MESSAGE:
        raise ProtocolError(f"{fd_count} fds attached, expected {FDS_PER_MESSAGE}")
    resp_id = _RESP.unpack_from(datagram, RESP_OFFSET)[0]
    if resp_id != notif_id:
        raise ProtocolError(f"response id {resp_id:#x} is not the notification id {notif_id:#x}")
    if monitor_pid <= 0 or init_pid <= 0 or pid <= 0:
        raise ProtocolError(f"bad pids: monitor {monitor_pid}, init {init_pid}, caller {pid}")
    return Notification(
        notif_id=notif_id, pid=pid, flags=flags, nr=nr, arch=arch, instruction_pointer=ip,
        args=(a0, a1, a2, a3, a4, a5), monitor_pid=monitor_pid, init_pid=init_pid,
        cookie=datagram[REPLY_SIZE:], raw_head=datagram[:RESP_OFFSET],
    )


def cookie_matches(presented: bytes, expected: bytes) -> bool:
    """Constant-time comparison: the cookie is a secret."""
    return hmac.compare_digest(presented, expected)


def build(notif_id: int, pid: int, nr: int, arch: int, args: tuple[int, ...], *,
          init_pid: int, cookie: bytes, sizes: NotifSizes, monitor_pid: int = 1) -> bytes:
    """Encode a datagram as LXC would (tests and the benchmark's fake monitor)."""
    padded = tuple(args) + (0,) * (6 - len(args))
    head = _HEADER_AND_NOTIF.pack(
        0, monitor_pid, init_pid, sizes.seccomp_notif, sizes.seccomp_notif_resp,
        sizes.seccomp_data, len(cookie), notif_id, pid, 0, nr, arch, 0, *padded)
    return head + _RESP.pack(notif_id, 0, 0, 0) + cookie


def unpack_reply(reply: bytes) -> tuple[int, int, int, int]:
    """``(id, val, error, flags)`` of a reply (tests)."""
    if len(reply) != REPLY_SIZE:
        raise ProtocolError(f"reply of {len(reply)} bytes")
    notif_id, val, error, flags = _RESP.unpack_from(reply, RESP_OFFSET)
    return notif_id, val, error, flags
