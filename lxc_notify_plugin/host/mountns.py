"""Mount namespaces of the daemon's own, each holding one tmpfs and nothing of the host's.

Some steps need a mount attached in the calling thread's namespace:
``open_tree(OPEN_TREE_CLONE)`` and ``mount --bind`` refuse (EINVAL) a source
that is in another namespace or in none (``__do_loopback``'s ``check_mnt``);
only 6.15 and later accept a detached source.  A tmpfs mounted in the host's
namespace would be seen, and could be unmounted, by the host's admin and
tools.  So such a tmpfs becomes the root of a namespace of its own: a copy of
the host's made private (nothing propagates back), the tmpfs moved in,
``pivot_root`` onto it and the host's tree detached, so the namespace pins no
host filesystem (one unmounted later is not kept busy here).  The namespace
lives as long as an fd of it; a thread joins it with ``setns`` for the one
step that needs it.
"""

from __future__ import annotations

import os
import threading

from .. import kernel


def root_into_new_namespace(mount_fd: int) -> None:
    """Move the calling task into a new mount namespace whose only mount is
    ``mount_fd``'s (a detached mount, from ``fsmount``), at ``/``; cwd ``/``.

    The task must own its filesystem state: a process, or a thread after
    ``unshare(CLONE_FS)`` (``CLONE_NEWNS`` implies it).  ``pivot_root`` moves
    the root of only the tasks in the new namespace: the others keep theirs.
    """
    kernel.unshare(kernel.CLONE_NEWNS)
    kernel.mount_setattr(kernel.AT_FDCWD, b"/", kernel.AT_RECURSIVE,
                         propagation=kernel.MS_PRIVATE)
    kernel.move_mount(mount_fd, b"", kernel.AT_FDCWD, b"/tmp", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    os.chdir("/tmp")
    kernel.pivot_root(b".", b".")
    kernel.umount2(b".", kernel.MNT_DETACH)
    os.chdir("/")


def tmpfs_namespace(options: dict[str, str], attrs: int) -> tuple[int, int]:
    """A new mount namespace rooted at a new tmpfs: (its namespace fd, an O_PATH fd
    of the tmpfs's root).  Made by a short-lived thread, so no serving
    thread's state changes; the fds keep both alive."""
    made: list[int] = []
    failed: list[BaseException] = []

    def make() -> None:
        proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            mount_fd = kernel.private_tmpfs(options, attrs)
            try:
                root_into_new_namespace(mount_fd)
            finally:
                os.close(mount_fd)
            made.append(os.open("thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC,
                                dir_fd=proc_fd))
            made.append(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException as err:
            failed.append(err)
            for fd in made:
                os.close(fd)
        finally:
            os.close(proc_fd)

    maker = threading.Thread(target=make, name="lxc-notify-mountns")
    maker.start()
    maker.join()
    if failed:
        raise failed[0]
    return made[0], made[1]
