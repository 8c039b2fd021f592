"""lxc-notify-plugin: seccomp user-notification supervisor for unprivileged LXC containers.

Layers, bottom up:

* ``kernel``      the kernel boundary: ctypes structs, ioctls, raw syscalls.
* ``protocol``    LXC's seccomp proxy datagrams.
* ``caller``      acting inside a container as the calling task would
                  (root, cwd, dirfd, credentials, umask, mount namespace).
* ``handlers``    one module per intercepted syscall.
* ``policy``      profiles and decisions: plain data, no fds.
* ``supervisor``  the socket server, one thread per container, dispatch.
* ``cli``         the ``lxc-notify`` command.
"""

import os
import sys

__version__ = "0.1.0"

# Debian's package ships pyseccomp, which Debian does not package, as a private
# module of this application in /usr/share/lxc-notify-plugin (Debian's Python
# policy: private modules live in /usr/share/PACKAGE, out of every other
# program's sys.path).  Appended, not prepended: a pyseccomp installed in a venv
# or system-wide still wins.  Every process of ours imports this package first
# (the daemon, `python -m lxc_notify_plugin.caller.actor` ...), so all find it.
PRIVATE_MODULES = "/usr/share/lxc-notify-plugin"
if os.path.isdir(PRIVATE_MODULES) and PRIVATE_MODULES not in sys.path:
    sys.path.append(PRIVATE_MODULES)
