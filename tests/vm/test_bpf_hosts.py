"""The bpf family on stock Debian 12 and 13 (pure cgroup v2), checked in a VM.

There LXC attaches its own device program to the container's cgroup, and
the container's cgroup2 is what LXC's stock configuration mounts.  A part of
each image's shared boot (tests/vm/boot.py), after the handler tests: the daemon
runs from this checkout (shared read-only at /mnt/src) in the venv the handler
part's setup.sh made (its own, from the wheels, when this part runs alone), a
busybox container under
LXC's generated AppArmor profile and LXC's common.conf (its device rules;
not userns.conf, which empties them) gets intercept.bpf and bpf.devices, and
tests/helpers/bpfprobe.c (static, shared at /mnt/helpers) makes the calls.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from tests.vm.boot import Part, PartResult
from tests.vm.conftest import SUMMARY, StockBoot
from tests.vm.image import REPO, SUITES
from tests.vm.runner import facts

SCRIPT = r"""
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/mnt/src PYTHONDONTWRITEBYTECODE=1
fact() { printf 'fact %s %s\n' "$1" "$(echo "$2" | tr '\n' ' ' | sed 's/ *$//')"; }
# The venv setup.sh made in the handler part before this one, where it ran (a venv and
# pip cost minutes under TCG); a venv of its own when this part runs alone.
venv=/root/lxc-notify-plugin/.venv
[ -x $venv/bin/python ] || { venv=/root/venv; python3 -m venv --system-site-packages $venv >&2 \
  && $venv/bin/pip install -q --no-compile --no-index --find-links /mnt/wheels \
       -r /mnt/wheels/requirements.txt >&2; }
fact kernel "$(uname -r)"
N="$venv/bin/python -m lxc_notify_plugin --config /root/daemon.toml
   --socket /run/lxcn/seccomp.sock --state-dir /root/state --profile-dir /root/profiles"
printf '[audit]\npath = ""\n' > /root/daemon.toml
$N daemon -v > /root/daemon.log 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S /run/lxcn/seccomp.sock ] && break; sleep 0.3; done
fact daemon "$([ -S /run/lxcn/seccomp.sock ] && echo up || echo down)"

for f in /etc/subuid /etc/subgid; do
  grep -qx 'root:100000:65536' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
done
# LXC's common.conf, as the stock templates' configurations include it: its device
# rules are what LXC turns into a device program on a cgroup v2 host.  Not
# userns.conf, which empties them for unprivileged containers ("CAP_SYS_ADMIN in
# init-user-ns is required for cgroup.devices"): LXC then attaches no program.
fact userns_conf_devices "$(grep -c '^lxc.cgroup2.devices.*= *$' /usr/share/lxc/config/userns.conf)"
cat > /root/c1.conf <<'EOF'
lxc.include = /usr/share/lxc/config/common.conf
lxc.tty.dir =
lxc.net.0.type = empty
lxc.apparmor.profile = generated
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
EOF
lxc-create -n c1 -t busybox -f /root/c1.conf >&2
cp /mnt/helpers/bpfprobe /var/lib/lxc/c1/rootfs/bin/bpfprobe
cat > /var/lib/lxc/c1/rootfs/bin/cg2 <<'EOF'
#!/bin/sh
grep ' - cgroup2 ' /proc/self/mountinfo | awk '$4 == "/" {print $5; exit}'
EOF
chmod 755 /var/lib/lxc/c1/rootfs/bin/cg2
$N enable c1 --profile default >&2
$N config set c1 security.syscalls.intercept.bpf true >&2
$N config set c1 security.syscalls.intercept.bpf.devices true >&2
lxc-start -n c1 >&2; lxc-wait -n c1 -s RUNNING -t 60 >&2
fact state "$(lxc-info -n c1 -sH)"
c1() { lxc-attach -n c1 --clear-env -- /bin/sh -c "PATH=/bin:/sbin; $1"; }
pid=$(lxc-info -n c1 -pH)
v2=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
fact cgroup "$v2"
fact lxc_program "$($venv/bin/python -c '
import os, sys
from lxc_notify_plugin.kernel import bpf
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
print(*bpf.prog_query(fd, bpf.BPF_CGROUP_DEVICE))' "/sys/fs/cgroup$v2")"
cg=$(c1 /bin/cg2)
fact cgroup2_inside "${cg:-none}"
fact mkdir "$(c1 "mkdir $cg/t1 && mkdir $cg/t2 && echo ok")"
fact attach "$(c1 "/bin/bpfprobe load 1 3 attach $cg/t1 2")"
fact inside "$(c1 "/bin/bpfprobe join $cg/t1 open /dev/null open /dev/zero")"
fact outside "$(c1 "/bin/bpfprobe open /dev/null")"
fact override "$(c1 "/bin/bpfprobe load 1 3 attach $cg/t2 1")"
fact link "$(c1 "/bin/bpfprobe load 1 5 link $cg/t2 join $cg/t2 open /dev/zero")"
fact non_root "$(lxc-attach -n c1 --clear-env -u 1000 -g 1000 -- /bin/bpfprobe load 1 3)"
fact other_type "$(c1 "/bin/bpfprobe loadtype 9")"
fact tracebacks "$(grep -c Traceback /root/daemon.log)"
grep -E "ERROR|Traceback" -A5 /root/daemon.log >&2
# Leave the machine as found, for the boot's next part.
lxc-stop -n c1 -k >&2
lxc-destroy -n c1 >&2
kill "$daemon_pid"; wait "$daemon_pid"
rm -rf /root/state /root/profiles /root/daemon.toml /run/lxcn
exit 0
"""


@dataclass(frozen=True)
class Run:
    result: PartResult
    facts: dict[str, str]

    def fact(self, name: str) -> str:
        assert name in self.facts, (f"the script never reported {name}\n"
                                    f"stderr:\n{self.result.stderr[-3000:]}")
        return self.facts[name]


def boot_part(tmp_path_factory: pytest.TempPathFactory) -> Part:
    helpers = tmp_path_factory.mktemp("vm-helpers")
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-Werror", "-o",
                    str(helpers / "bpfprobe"), str(REPO / "tests/helpers/bpfprobe.c")],
                   check=True)
    return Part("bpf", SCRIPT, timeout=600, shares={"helpers": helpers})


@pytest.fixture(scope="module", params=sorted(SUITES))
def run(request: pytest.FixtureRequest, stock_boot: StockBoot) -> Run:
    result = stock_boot(request.param, "bpf")
    found = facts(result.stdout)
    SUMMARY.append(f"{request.param} bpf: LXC's device program {found.get('lxc_program')}, "
                   f"cgroup2 in the container at {found.get('cgroup2_inside')}")
    return Run(result, found)


def test_the_container_runs_supervised(run: Run) -> None:
    assert run.result.status == 0, run.result.output[-3000:]
    assert run.fact("daemon") == "up" and run.fact("state") == "RUNNING"
    assert run.fact("tracebacks") == "0", run.result.stderr[-3000:]


def test_lxc_attaches_its_device_program_with_multi_semantics(run: Run) -> None:
    # With common.conf's rules; userns.conf (2 lines) empties them.
    assert run.fact("userns_conf_devices") == "2"
    flags, count = run.fact("lxc_program").split()
    assert int(flags) == 2 and int(count) >= 1  # BPF_F_ALLOW_MULTI


def test_the_container_narrows_its_own_devices_below_lxcs_program(run: Run) -> None:
    assert run.fact("cgroup2_inside") != "none"
    assert run.fact("mkdir") == "ok", run.result.stderr[-3000:]
    assert run.fact("attach") == "ok ok"
    assert run.fact("inside") == "ok EPERM ok"
    assert run.fact("outside") == "ok"
    assert run.fact("link") == "ok ok ok EPERM"


def test_what_the_container_may_not(run: Run) -> None:
    assert run.fact("override") == "ok EPERM"
    assert run.fact("non_root") == "EPERM"
    assert run.fact("other_type") == "EPERM"
