"""What an admin relies on in a stock Debian 12 and Debian 13 host, checked in a VM.

The first part of each image's shared boot (tests/vm/boot.py), before any other
part installs anything: the script below gathers every fact (``fact NAME VALUE``
lines on stdout, the commands' own chatter on stderr) and goes on past a
failed step, so one broken step fails its own test and the others still say
something.  These facts are the baseline the rest of issue 19 builds on: the
stock kernel and LXC, systemd as PID 1, cgroup v2 only, AppArmor on, lxcfs,
and an unprivileged busybox container under LXC's stock AppArmor profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.vm.boot import Part, PartResult
from tests.vm.conftest import SUMMARY, StockBoot
from tests.vm.image import SUITES, Suite
from tests.vm.runner import facts

FACTS = r"""
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fact() { printf 'fact %s %s\n' "$1" "$2"; }

fact pid1 "$(cat /proc/1/comm)"
fact cgroupfs "$(stat -fc %T /sys/fs/cgroup)"
fact cgroup_v1_mounts "$(awk '$3 == "cgroup"' /proc/mounts | wc -l)"
fact apparmor "$(cat /sys/module/apparmor/parameters/enabled)"
fact kernel "$(uname -r)"
fact lxc "$(lxc-start --version)"
fact lxcfs_unit "$(systemctl is-active lxcfs)"
fact lxcfs_mount "$(findmnt -no FSTYPE /var/lib/lxcfs)"
fact python "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
systemctl --failed --no-legend --plain >&2


# An unprivileged busybox container, as NOTES.md and setup.sh set one up, under
# the AppArmor profile Debian's /etc/lxc/default.conf names.
for f in /etc/subuid /etc/subgid; do
  grep -qx 'root:100000:65536' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
done
cat > /root/c1.conf <<'EOF'
lxc.net.0.type = empty
lxc.apparmor.profile = generated
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
EOF
lxc-create -n c1 -t busybox -f /root/c1.conf >&2; fact lxc_create $?
lxc-start -n c1 >&2; fact lxc_start $?
lxc-wait -n c1 -s RUNNING -t 60 >&2
fact lxc_state "$(lxc-info -n c1 -sH)"
pid=$(lxc-info -n c1 -pH)
fact container_init_uid "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
fact container_apparmor "$(tr -d '\0' < "/proc/$pid/attr/current" 2>/dev/null | tr ' ' _)"
fact container_echo "$(lxc-attach -n c1 --clear-env -- /bin/busybox echo hello)"
lxc-stop -n c1 -k >&2
lxc-destroy -n c1 >&2
exit 0
"""


def boot_part(tmp_path_factory: pytest.TempPathFactory) -> Part:
    return Part("hosts", FACTS, timeout=600)


@dataclass(frozen=True)
class Host:
    suite: Suite
    result: PartResult
    facts: dict[str, str]

    def fact(self, name: str) -> str:
        assert name in self.facts, (f"{self.suite.name}: the script never reported {name}\n"
                                    f"stderr:\n{self.result.stderr[-3000:]}")
        return self.facts[name]


@pytest.fixture(scope="module", params=sorted(SUITES))
def host(request: pytest.FixtureRequest, stock_boot: StockBoot) -> Host:
    result = stock_boot(request.param, "hosts")
    found = facts(result.stdout)
    SUMMARY.append(f"{request.param}: kernel {found.get('kernel')}, lxc {found.get('lxc')}, "
                   f"python {found.get('python')}, cgroup {found.get('cgroupfs')}, "
                   f"apparmor {found.get('apparmor')}")
    return Host(SUITES[request.param], result, found)


def test_the_script_ran_to_its_end(host: Host) -> None:
    assert host.result.status == 0, host.result.output[-3000:]


def test_systemd_is_pid_1(host: Host) -> None:
    assert host.fact("pid1") == "systemd"


def test_cgroup2_only(host: Host) -> None:
    assert host.fact("cgroupfs") == "cgroup2fs"
    assert host.fact("cgroup_v1_mounts") == "0"


def test_apparmor_is_enabled(host: Host) -> None:
    assert host.fact("apparmor") == "Y"


def test_stock_kernel(host: Host) -> None:
    assert host.fact("kernel").startswith(host.suite.kernel_series)


def test_stock_lxc(host: Host) -> None:
    assert host.fact("lxc").startswith(host.suite.lxc_series)


def test_lxcfs_is_running(host: Host) -> None:
    assert host.fact("lxcfs_unit") == "active"
    assert host.fact("lxcfs_mount") == "fuse.lxcfs"


def test_python_is_the_suites(host: Host) -> None:
    # The project's wheels installing without network is the handler part's first
    # step (setup.sh, test_handlers.test_the_readme_demo_runs): a venv of its own here
    # cost about 100 s of TCG (ensurepip alone is 4 s natively).
    assert host.fact("python") == host.suite.python


def test_unprivileged_busybox_container_starts(host: Host) -> None:
    assert host.fact("lxc_create") == "0", host.result.stderr[-3000:]
    assert host.fact("lxc_start") == "0", host.result.stderr[-3000:]
    assert host.fact("lxc_state") == "RUNNING"
    assert host.fact("container_init_uid") == "100000"
    assert host.fact("container_echo") == "hello"


def test_container_is_confined_by_lxc_generated_profile(host: Host) -> None:
    # LXC names the profile it generates for a container lxc-NAME_<LXCPATH>.
    label = host.fact("container_apparmor")
    assert label.startswith("lxc-c1_") and label.endswith("(enforce)"), label
