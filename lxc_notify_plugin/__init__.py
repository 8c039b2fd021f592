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

__version__ = "0.1.0"
