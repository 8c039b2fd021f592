"""Lock the flags the policy forces on a mount before the container receives it.

A mount the daemon builds (fsmount, as host root) and attaches into a
container carries plain mount flags, and container root holds CAP_SYS_ADMIN
over its own mount namespace: ``mount -o remount,bind,dev``, a bind of it
then a remount, or ``mount_setattr`` clearing ``MOUNT_ATTR_NODEV`` would
give it device nodes from its own image on a superblock owned by the host
(no SB_I_NODEV): an escape.  The kernel protects exactly this case for
mounts a *less privileged* mount namespace receives: ``lock_mnt_tree()``
sets MNT_LOCK_READONLY/NODEV/NOSUID/NOEXEC/ATIME for the flags a mount has,
and ``can_change_locked_flags()`` then refuses (EPERM) every remount, bind
remount and ``mount_setattr`` that would drop one, whoever asks.

Kernel facts (fs/namespace.c, 5.0 to 6.18):

* only ``lock_mnt_tree()`` sets the locks: from ``copy_mnt_ns()`` into a new
  user namespace, and from ``attach_recursive_mnt()`` for each copy
  *propagated* into a namespace whose user namespace differs from the
  attaching task's (commit 3bd045cc9c4b, 5.0);
* ``clone_mnt()`` copies the flags, locks and idmapping, so an
  ``open_tree(OPEN_TREE_CLONE)`` of a locked mount stays locked; its root
  does not keep MNT_LOCKED (``__do_loopback`` clears it; since 6.16
  ``clone_mnt`` never sets it on a parentless mount), so container root can
  still unmount it, as it can a mount of its own.

So, once per daemon, two mount namespaces: H, owned by the host's user
namespace, whose root is a small tmpfs made shared; and N, a copy of H made
in a new user namespace (its root a slave of H's).  Per mount: attach it in
H (the kernel propagates a locked copy into N), clone that copy from N,
detach both, and hand the clone on.  Three ``setns`` in the calling thread
(which owns its fs state), no process per mount.  The atime setting is
locked too (always, by the kernel): container root cannot change it later.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading

from .. import kernel
from ..errors import SupervisorFault, ThreadIdentityLost, own_step
from .mountns import root_into_new_namespace

_SLOT_MODE = 0o700


class FlagLocker:
    """The two namespaces; ``lock(mount_fd)`` returns a clone whose flags are locked."""

    def __init__(self) -> None:
        self.staging_ns_fd = self.receiver_ns_fd = -1
        child = subprocess.Popen([sys.executable, "-m", "lxc_notify_plugin.host.flaglock"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/",
                                 close_fds=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            for step in ("staging", "receiver"):
                said = child.stdout.readline()
                if said != f"{step}\n".encode():
                    raise SupervisorFault(f"make the {step} mount namespace",
                                          OSError(0, said.decode(errors="replace").strip()
                                                  or f"helper exit {child.poll()}"))
                fd = os.open(f"/proc/{child.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                if step == "staging":
                    self.staging_ns_fd = fd
                    child.stdin.write(b"\n")
                    child.stdin.flush()
                else:
                    self.receiver_ns_fd = fd
        except BaseException:
            self.close()
            raise
        finally:
            child.stdin.close()
            child.wait()
            child.stdout.close()
        self._serial = itertools.count()

    def lock(self, mount_fd: int, return_ns_fd: int) -> int:
        """A detached, private clone of the detached mount ``mount_fd`` (idmapped or
        not) with its flags locked.  ``mount_fd`` ends unmounted; the calling
        thread ends in ``return_ns_fd``'s namespace, at its root."""
        slot = f"/s{threading.get_native_id()}.{next(self._serial)}".encode()
        try:
            kernel.setns(self.staging_ns_fd, kernel.CLONE_NEWNS)
            os.mkdir(slot, _SLOT_MODE)
            try:
                kernel.move_mount(mount_fd, b"", kernel.AT_FDCWD, slot,
                                  kernel.MOVE_MOUNT_F_EMPTY_PATH)
                try:
                    kernel.setns(self.receiver_ns_fd, kernel.CLONE_NEWNS)
                    locked = kernel.open_tree(kernel.AT_FDCWD, slot,
                                              kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
                finally:
                    kernel.setns(self.staging_ns_fd, kernel.CLONE_NEWNS)
                    kernel.umount2(slot, kernel.MNT_DETACH)
            finally:
                os.rmdir(slot)
            try:
                kernel.mount_setattr(locked, b"", kernel.AT_EMPTY_PATH,
                                     propagation=kernel.MS_PRIVATE)
            except BaseException:
                os.close(locked)
                raise
            return locked
        finally:
            try:
                kernel.setns(return_ns_fd, kernel.CLONE_NEWNS)
            except OSError as err:
                # The thread stays in our staging namespace: it must serve no one.
                raise ThreadIdentityLost(f"could not return from the flag locker's "
                                         f"namespace: {err}") from err

    def close(self) -> None:
        for name in ("staging_ns_fd", "receiver_ns_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class MountFlagLocks:
    """The daemon's FlagLocker, made on first use (its namespaces cost a process
    start once), shared by every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locker: FlagLocker | None = None

    # The namespaces, their tmpfs and its slots are the daemon's own: whatever fails
    # in them is the supervisor's fault, never an errno the caller would read as
    # the kernel's answer about its mount (an ENOSPC of our tmpfs, say).
    @own_step("lock the mount's forced flags")
    def lock(self, mount_fd: int, return_ns_fd: int) -> int:
        with self._lock:
            if self._locker is None:
                self._locker = FlagLocker()
            locker = self._locker
        return locker.lock(mount_fd, return_ns_fd)

    def close(self) -> None:
        with self._lock:
            if self._locker is not None:
                self._locker.close()
                self._locker = None


# --- the helper that makes the namespaces ------------------------------------------------


def main() -> int:
    """Single-threaded, as unshare(CLONE_NEWUSER) needs: H, then N."""
    root = kernel.private_tmpfs({"mode": "0700", "size": "16k", "nr_inodes": "4096"},
                                kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NODEV
                                | kernel.MOUNT_ATTR_NOEXEC)
    root_into_new_namespace(root)  # nothing made here propagates back to the host's
    os.close(root)
    kernel.mount_setattr(kernel.AT_FDCWD, b"/", 0, propagation=kernel.MS_SHARED)
    sys.stdout.write("staging\n")
    sys.stdout.flush()
    sys.stdin.readline()
    kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS)
    sys.stdout.write("receiver\n")
    sys.stdout.flush()
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as err:
        sys.stdout.write(f"{err}\n")
        sys.exit(1)
