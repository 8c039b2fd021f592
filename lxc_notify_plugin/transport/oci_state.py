"""The OCI seccomp agent's wire format: the ``ContainerProcessState`` a runtime sends.

Each time a runtime (runc, crun) installs a filter with a ``SCMP_ACT_NOTIFY``
rule, at the container's start and again for every ``exec`` into it, it
connects to the agent's SOCK_STREAM socket (``linux.seccomp.listenerPath``,
served by ``oci_agent.py``) and sends one JSON ``ContainerProcessState`` with
the listener fd attached (SCM_RIGHTS)::

    {"ociVersion": "1.0.2-dev", "fds": ["seccompFd"], "pid": 4242,
     "metadata": "profile=default",
     "state": {"ociVersion": "1.0.2-dev", "id": "web", "status": "creating",
               "pid": 4242, "bundle": "/srv/web", "annotations": {...}}}

Seen on this machine: runc 1.1.5 sends it in one write and keeps its end open
(so the end of the JSON, not EOF, ends the message); crun 1.8.1 sends it
pretty-printed with ``ociVersion`` "0.2.0" and closes.  ``fds`` names the
attached fds in order; ``pid`` is the process the filter was installed in,
``state.pid`` the container's init (an ``exec``'s message names its own
process and the container's init).

Reading and parsing only: nothing here serves a listener or picks a policy.
"""

from __future__ import annotations

import array
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ..errors import ProtocolError

MAX_STATE: Final = 256 * 1024  # a state with its annotations; more is refused
MAX_FDS: Final = 16  # more than any runtime sends: extra fds are received and closed
HANDSHAKE_SECONDS: Final = 5.0  # a peer that sends no complete state by then is dropped
PROFILE_KEY: Final = "profile"
PROFILE_ANNOTATION: Final = "org.lxc-notify.profile"
DEFAULT_PROFILE: Final = "default"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a name, never a path
_ANCILLARY: Final = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


@dataclass(frozen=True)
class ProcessState:
    """What a runtime says about one listener: the OCI ``ContainerProcessState``."""

    oci_version: str
    container_id: str
    init_pid: int  # state.pid: the container's init, on the host
    pid: int  # the process the filter was installed in (init, or an exec'd one)
    status: str
    bundle: str
    metadata: str
    annotations: dict[str, str] = field(default_factory=dict)
    seccomp_fd_index: int = 0  # where "seccompFd" is among the attached fds

    @property
    def profile(self) -> str:
        """``profile=NAME`` in the listener metadata, else the annotation, else default."""
        for word in re.split(r"[\s,;]+", self.metadata):
            key, sep, value = word.partition("=")
            if sep and key == PROFILE_KEY and value:
                return value
        return self.annotations.get(PROFILE_ANNOTATION) or DEFAULT_PROFILE


def profile_name_ok(name: str) -> bool:
    return bool(_PROFILE_NAME.match(name))


def parse_state(data: bytes, fd_count: int) -> ProcessState:
    """Decode one state; ProtocolError says what is wrong with it.

    Tolerant where runtimes differ (``ociVersion``, extra fields, missing
    annotations and metadata), strict where we act on it: a container id, a
    positive init pid and a ``seccompFd`` among the fds actually attached."""
    if len(data) > MAX_STATE:
        raise ProtocolError(f"state of {len(data)} bytes, more than {MAX_STATE}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("not a JSON object")
    state = doc.get("state")
    if not isinstance(state, dict):
        raise ProtocolError("no state object")
    fds = doc.get("fds")
    if not isinstance(fds, list) or not all(isinstance(f, str) for f in fds):
        raise ProtocolError("fds is not an array of names")
    if "seccompFd" not in fds:
        raise ProtocolError(f"no seccompFd among the fds {fds}")
    index = fds.index("seccompFd")
    if len(fds) != fd_count:
        raise ProtocolError(f"{len(fds)} fds named, {fd_count} attached")
    container_id = state.get("id")
    if not isinstance(container_id, str) or not container_id or len(container_id) > 1024:
        raise ProtocolError("state.id is missing or not a string")
    init_pid = _positive(state.get("pid"))
    pid = _positive(doc.get("pid")) or init_pid
    if not init_pid:
        raise ProtocolError("state.pid is missing or not a positive integer")
    annotations = state.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ProtocolError("state.annotations is not an object")
    metadata = doc.get("metadata") or ""
    if not isinstance(metadata, str):
        raise ProtocolError("metadata is not a string")
    return ProcessState(
        oci_version=str(doc.get("ociVersion", "")), container_id=container_id,
        init_pid=init_pid, pid=pid, status=str(state.get("status", "")),
        bundle=str(state.get("bundle", "")), metadata=metadata,
        annotations={str(k): str(v) for k, v in annotations.items()},
        seccomp_fd_index=index)


def _positive(value: Any) -> int:
    # bool is an int in Python; JSON true is not a pid.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _complete(buffer: bytes | bytearray) -> bool:
    """Whether the bytes so far may be a whole JSON object (parsed only then:
    a peer sending one byte at a time must not make us parse 256 KiB 256 Ki times)."""
    end = buffer.rstrip()
    if not end.endswith(b"}"):
        return False
    try:
        json.loads(end)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return True


def receive_state(conn: socket.socket, timeout: float = HANDSHAKE_SECONDS
                  ) -> tuple[bytes, list[int]]:
    """Read until the bytes form one JSON object, EOF, the size bound or the
    deadline; return them with every fd that came along (the caller closes
    them, whatever it then decides)."""
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    fds: list[int] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no complete state within {timeout:g} s")
            conn.settimeout(remaining)
            try:
                data, ancillary, flags, _ = conn.recvmsg(65536, _ANCILLARY,
                                                         socket.MSG_CMSG_CLOEXEC)
            except TimeoutError:
                raise ProtocolError(f"no complete state within {timeout:g} s") from None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % array.array("i").itemsize
                    fds.extend(array.array("i", payload[:usable]))
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError(f"more than {MAX_FDS} fds attached")
            if not data:
                return bytes(buffer), fds
            buffer += data
            if len(buffer) > MAX_STATE:
                raise ProtocolError(f"state longer than {MAX_STATE} bytes")
            if _complete(buffer):
                return bytes(buffer), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
