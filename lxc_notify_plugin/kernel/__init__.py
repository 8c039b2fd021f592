"""The kernel boundary: seccomp notify structs and ioctls, raw syscalls, errno.

Everything that talks to the kernel without a Python wrapper lives in this
package and nowhere else; the rest of lxc_notify_plugin calls these functions
with plain ints and bytes and gets ``OSError`` (with the kernel's errno, and
the call's name in the message) when they fail.  Import from here
(``from lxc_notify_plugin import kernel``); the submodules are:

* ``_ctypeslib``  every C signature and error checker, as tables, and the one
                  loader that applies them (private: only this package uses it).
* ``seccomp``     the notification structs and the listener's ioctls.
* ``arch``        audit arches and syscall numbers (the only user of libseccomp).
* ``memory``      the caller's memory, read and written as the kernel would.
* ``fs``          openat2 and statx.
* ``mount``       the new mount API and the mount flags.
* ``creds``       capabilities, fsuid/fsgid, groups of the calling thread.
* ``ns``          setns, unshare, the nsfs ioctls, prctl.
* ``sysinfo``     ``struct sysinfo`` in the 64-bit and compat layouts; the host's.

Each submodule opens with the kernel facts that shaped it.  Importing the
package does not load libseccomp: decoding LXC's datagrams works without it.
"""

from __future__ import annotations

from . import arch, creds, fs, memory, mount, ns, seccomp, sysinfo
from .arch import *  # noqa: F403
from .creds import *  # noqa: F403
from .fs import *  # noqa: F403
from .memory import *  # noqa: F403
from .mount import *  # noqa: F403
from .ns import *  # noqa: F403
from .seccomp import *  # noqa: F403
from .sysinfo import *  # noqa: F403

__all__ = [
    *seccomp.__all__, *arch.__all__, *memory.__all__, *fs.__all__, *mount.__all__,
    *creds.__all__, *ns.__all__, *sysinfo.__all__,
]
