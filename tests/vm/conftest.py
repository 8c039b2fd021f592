"""The real-hosts tier: stock Debian 12 and 13 in QEMU (tests/vm/image.py, runner.py).

Slow (minutes per image under TCG) and heavy, so it runs only when asked:
``pytest --vm tests/vm``.  Without ``--vm`` its tests are deselected, not
skipped; with it, under CI=true, a missing QEMU or debootstrap is a failure.
The modules that need only a fresh stock machine share one boot per image
(``stock_boot``, tests/vm/boot.py); test_package boots its own disk twice;
every boot holds the machine's heavy-job lock (image.HEAVY_LOCK).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import IN_CI, require_root, require_tools
from tests.vm import boot as boots
from tests.vm import image as images
from tests.vm import package
from tests.vm.runner import VMResult, run_in_vm, wheels

VM_TESTS = Path(__file__).resolve().parent
SUMMARY: list[str] = []  # wall times and what each guest runs, printed at the end


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every item of the session, not only this folder's.
    ours = [item for item in items if VM_TESTS in item.path.resolve().parents]
    for item in ours:
        item.add_marker(pytest.mark.vm)
    if ours and not config.getoption("--vm"):
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("vm tier")
        for line in SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def vm_image() -> Iterator[Callable[[str], images.Image]]:
    """suite name -> its cached image, built on first use."""
    require_root()
    require_tools("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")
    built: dict[str, images.Image] = {}

    def get(suite: str) -> images.Image:
        if suite not in built:
            started = time.monotonic()
            built[suite] = images.image(suite)
            SUMMARY.append(f"{suite}: image ready in {time.monotonic() - started:.1f} s "
                           f"(its cold build took {built[suite].build_seconds:.1f} s)")
        return built[suite]

    yield get


VMRun = Callable[..., VMResult]
StockBoot = Callable[[str, str], boots.PartResult]


@pytest.fixture(scope="session")
def stock_boot(request: pytest.FixtureRequest, vm_image: Callable[[str], images.Image],
               tmp_path_factory: pytest.TempPathFactory) -> StockBoot:
    """``stock_boot(suite, part) -> PartResult``: one boot of SUITE for every module
    of this session that declares ``boot_part(tmp_path_factory) -> boot.Part``."""
    modules: set[ModuleType] = set()
    for item in request.session.items:
        module = getattr(item, "module", None)
        if isinstance(module, ModuleType) and hasattr(module, "boot_part"):
            modules.add(module)
    done: dict[str, dict[str, boots.PartResult]] = {}
    failed: dict[str, Exception] = {}  # a boot that failed fails every module, once

    def get(suite: str, name: str) -> boots.PartResult:
        if suite in failed:
            raise failed[suite]
        if suite not in done:
            img = vm_image(suite)
            parts = [module.boot_part(tmp_path_factory) for module in modules]
            src = boots.source_tree(tmp_path_factory.mktemp(f"src-{suite}"))
            try:
                done[suite] = boots.boot(img, parts, tmp_path_factory.mktemp(f"vm-{suite}"),
                                         src)
            except Exception as err:
                failed[suite] = err
                raise
            first = next(iter(done[suite].values())).boot
            each = ", ".join(f"{part_name} {part.seconds} s"
                             for part_name, part in done[suite].items())
            SUMMARY.append(f"{suite}: one boot for {each}: boot to script "
                           f"{first.boot_seconds:.1f} s, QEMU {first.total_seconds:.1f} s, "
                           f"lock wait {first.lock_wait:.1f} s")
        if name not in done[suite]:
            raise AssertionError(f"no module of this session declared the part {name!r}")
        return done[suite][name]

    return get


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> package.Built:
    """The Debian package, built once per session from a clean copy of the tree (as CI
    builds it); its directory (the .deb, source.tar, build.log) is for a guest's share."""
    require_root()
    require_tools("git", "apt-get")
    built = package.build(tmp_path_factory.mktemp("deb"))
    SUMMARY.append(f"package: {built.deb.name} built in {built.seconds:.1f} s (build-dep "
                   f"and dpkg-buildpackage), lock wait {built.lock_wait:.1f} s")
    return built


@pytest.fixture(scope="module")
def vm_run(vm_image: Callable[[str], images.Image],
           tmp_path_factory: pytest.TempPathFactory) -> VMRun:
    """Run a bash script as root in a boot of SUITE, the project's wheels at /mnt/wheels.

    ``vm_run(suite, script, timeout=600, env=None, shares=None, disk=None) -> VMResult``;
    CI is passed on; SHARES adds read-only 9p shares (/mnt/TAG); DISK is a
    runner.machine_disk to boot from (a fresh throwaway overlay without it).
    """

    def run(suite: str, script: str, timeout: float = 600,
            env: Mapping[str, str] | None = None,
            shares: Mapping[str, Path] | None = None, disk: Path | None = None) -> VMResult:
        img = vm_image(suite)
        share = tmp_path_factory.mktemp(f"vm-{suite}")
        result = run_in_vm(img, script, share, timeout,
                           shares={"wheels": wheels(img.suite.python), **(shares or {})},
                           env={"CI": "true" if IN_CI else "", **(env or {})}, disk=disk)
        SUMMARY.append(f"{suite}: boot to script start {result.boot_seconds:.1f} s, QEMU "
                       f"{result.total_seconds:.1f} s, lock wait {result.lock_wait:.1f} s")
        return result

    return run

