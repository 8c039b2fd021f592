"""setxattr emulation (trusted.overlay.*) in a real unprivileged container, through LXC
and the kernel, checked from the host."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tools
from tests.lxc.conftest import Container, Daemon, supervised_container

OPAQUE = "trusted.overlay.opaque"


def unique(prefix: str = "x") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def docker(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    box = supervised_container(daemon, nodeprobe, profile="docker")
    try:
        yield box
    finally:
        box.destroy()


def made_dir(box: Container, prefix: str = "d") -> str:
    path = f"/tmp/{unique(prefix)}"
    box.sh(f"mkdir {path}")
    return path


def host_xattr(box: Container, path: str, name: str = OPAQUE) -> bytes | None:
    try:
        return os.getxattr(box.rootfs / path.lstrip("/"), name, follow_symlinks=False)
    except OSError:
        return None


def test_opaque_through_setxattr_lsetxattr_and_fsetxattr(docker: Container) -> None:
    for variant in ("set", "fset"):
        directory = made_dir(docker)
        assert docker.probe("xattr", variant, directory, OPAQUE, "y") == "ok"
        assert host_xattr(docker, directory) == b"y"
    # lsetxattr on a symlink marks the link itself, not what it points to.
    target = made_dir(docker)
    link = f"/tmp/{unique('l')}"
    docker.sh(f"ln -s {target} {link}")
    assert docker.probe("xattr", "lset", link, OPAQUE, "y") == "ok"
    assert host_xattr(docker, link) == b"y" and host_xattr(docker, target) is None
    # setxattr through the same link follows it.
    assert docker.probe("xattr", "set", link, OPAQUE, "x") == "ok"
    assert host_xattr(docker, target) == b"x" and host_xattr(docker, link) == b"y"


def test_a_relative_path_from_the_callers_cwd(docker: Container) -> None:
    directory = made_dir(docker)
    docker.sh(f"mkdir {directory}/sub")
    assert docker.probe("xattr", "set", "sub", OPAQUE, "y", cwd=directory) == "ok"
    assert docker.probe("xattr", "set", "..", OPAQUE, "y", cwd=f"{directory}/sub") == "ok"
    assert host_xattr(docker, f"{directory}/sub") == b"y" and host_xattr(docker, directory) == b"y"


def test_a_100_byte_redirect_value(docker: Container) -> None:
    directory = made_dir(docker)
    assert docker.probe("xattr-size", directory, "trusted.overlay.redirect", "100") == "ok"
    assert host_xattr(docker, directory, "trusted.overlay.redirect") == b"v" * 100


def test_create_and_replace_give_the_kernels_eexist_and_enodata(docker: Container) -> None:
    directory = made_dir(docker)
    assert docker.probe("xattr", "set", directory, OPAQUE, "y", "replace") == "ENODATA"
    assert host_xattr(docker, directory) is None
    assert docker.probe("xattr", "set", directory, OPAQUE, "y", "create") == "ok"
    assert docker.probe("xattr", "set", directory, OPAQUE, "n", "create") == "EEXIST"
    assert docker.probe("xattr", "set", directory, OPAQUE, "n", "replace") == "ok"
    assert host_xattr(docker, directory) == b"n"
    assert docker.probe("xattr", "set", directory, OPAQUE, "y", "4") == "EINVAL"


def test_a_non_root_container_user_is_refused(docker: Container) -> None:
    directory = made_dir(docker)
    docker.sh(f"chown 1000:1000 {directory}")
    assert docker.probe("xattr", "set", directory, OPAQUE, "y", uid=1000, gid=1000) == "EPERM"
    assert host_xattr(docker, directory) is None


def test_an_unlisted_trusted_name_is_refused_by_the_kernel(docker: Container) -> None:
    directory = made_dir(docker)
    assert docker.probe("xattr", "set", directory, "trusted.overlay.other", "y") == "EPERM"
    assert docker.probe("xattr", "set", directory, "trusted.lxc", "y") == "EPERM"
    assert host_xattr(docker, directory, "trusted.overlay.other") is None


def test_user_names_still_work_handed_back(docker: Container) -> None:
    path = f"/tmp/{unique('f')}"
    docker.sh(f"touch {path}")
    assert docker.probe("xattr", "set", path, "user.note", "hello") == "ok"
    assert docker.probe("getxattr", path, "user.note") == "value hello"
    assert host_xattr(docker, path, "user.note") == b"hello"


def test_container_root_reads_trusted_back_as_enodata(docker: Container) -> None:
    # getxattr is not trapped (too hot): the kernel hides trusted.* from a
    # user namespace's root, as it does with LXD.
    directory = made_dir(docker)
    assert docker.probe("xattr", "set", directory, OPAQUE, "y") == "ok"
    assert docker.probe("getxattr", directory, OPAQUE) == "ENODATA"


def test_kernel_errors_for_the_file(docker: Container) -> None:
    missing = f"/tmp/{unique('missing')}"
    assert docker.probe("xattr", "set", missing, OPAQUE, "y") == "ENOENT"
    assert docker.probe("xattr", "fset", missing, OPAQUE, "y") == "ENOENT"  # open fails
    assert docker.probe("xattr", "set", "", OPAQUE, "y") == "ENOENT"
    directory = made_dir(docker)
    assert docker.probe("xattr", "fset-opath", directory, OPAQUE, "y") == "EBADF"
    assert host_xattr(docker, directory) is None


def test_a_file_the_container_does_not_own_is_refused(docker: Container) -> None:
    # Owned by an unmapped host id (nobody inside): root in a privileged
    # container could, a user namespace's root cannot.
    directory = docker.rootfs / "tmp" / unique("host")
    directory.mkdir(mode=0o777)
    assert docker.probe("xattr", "set", f"/tmp/{directory.name}", OPAQUE, "y") == "EPERM"
    assert host_xattr(docker, f"/tmp/{directory.name}") is None


def test_paths_stay_inside_the_container(docker: Container) -> None:
    name = unique("escape")
    link = f"/tmp/{unique('l')}"
    docker.sh(f"ln -s / {link} && mkdir /{name}")
    assert docker.probe("xattr", "set", f"{link}/{name}", OPAQUE, "y") == "ok"
    assert not Path("/", name).exists()
    assert host_xattr(docker, f"/{name}") == b"y"
    # Another task's root is followed as the kernel follows it for container root.
    docker.sh(f"mkdir /{name}-magic")
    assert docker.probe("xattr", "set", f"/proc/1/root/{name}-magic", OPAQUE, "y") == "ok"
    assert host_xattr(docker, f"/{name}-magic") == b"y"


def test_a_host_mounted_overlay_honours_the_opaque_directory(docker: Container) -> None:
    """overlayfs mounted by the host (as the supervisor's mount emulation would)
    reads trusted.overlay.*: the directory made opaque inside hides the lower one."""
    require_tools("nsenter")
    base = made_dir(docker, "ov")
    docker.sh(f"mkdir -p {base}/lower/opaque {base}/lower/plain {base}/upper/opaque "
              f"{base}/upper/plain {base}/work {base}/merged && "
              f"touch {base}/lower/opaque/hidden {base}/lower/plain/seen")
    assert docker.probe("xattr", "set", f"{base}/upper/opaque", OPAQUE, "y") == "ok"
    subprocess.run(["nsenter", "-t", str(docker.init_pid()), "-m", "mount", "-t", "overlay",
                    "overlay", "-o", f"lowerdir={base}/lower,upperdir={base}/upper,"
                    f"workdir={base}/work", f"{base}/merged"], check=True)
    try:
        assert docker.sh(f"ls {base}/merged/opaque").split() == []
        assert docker.sh(f"ls {base}/merged/plain").split() == ["seen"]
    finally:
        subprocess.run(["nsenter", "-t", str(docker.init_pid()), "-m", "umount",
                        f"{base}/merged"], check=False)
