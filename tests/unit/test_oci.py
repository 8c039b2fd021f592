"""The OCI agent's state parsing and the OCI seccomp rendering, without privileges."""

from __future__ import annotations

import contextlib
import itertools
import json
import stat
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from lxc_notify_plugin.errors import ConfigError, ProtocolError
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.policy import oci_profile
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.filter import NE, ArgMatch, Rule
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.transport.oci_state import _complete, parse_state
from tests.conftest import require

OURS = {"mknod", "mknodat", "mount", "fsopen"}
RUNC = (b'{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":24914,"metadata":"profile=docker",'
        b'"state":{"ociVersion":"1.0.2-dev","id":"rt1","status":"creating","pid":24914,'
        b'"bundle":"/tmp/b"}}')
CRUN = json.dumps({"ociVersion": "0.2.0", "fds": ["seccompFd"], "pid": 776, "metadata": "",
                   "state": {"ociVersion": "0.2.0", "id": "cr5", "status": "creating",
                             "pid": 776, "bundle": "/b",
                             "annotations": {"org.lxc-notify.profile": "fuse"}}},
                  indent=4).encode()


def test_runc_and_crun_states_parse() -> None:
    runc = parse_state(RUNC, 1)
    assert (runc.container_id, runc.init_pid, runc.pid, runc.profile) == (
        "rt1", 24914, 24914, "docker")
    crun = parse_state(CRUN, 1)
    assert (crun.oci_version, crun.container_id, crun.profile) == ("0.2.0", "cr5", "fuse")


def test_profile_defaults_and_metadata_wins() -> None:
    doc = json.loads(CRUN)
    doc["state"]["annotations"] = {}
    assert parse_state(json.dumps(doc).encode(), 1).profile == "default"
    doc["metadata"] = "other=1, profile=tun"
    doc["state"]["annotations"] = {"org.lxc-notify.profile": "fuse"}
    assert parse_state(json.dumps(doc).encode(), 1).profile == "tun"


def test_an_exec_names_its_process_and_the_container_init() -> None:
    doc = json.loads(RUNC)
    doc["pid"] = 30000
    state = parse_state(json.dumps(doc).encode(), 1)
    assert (state.pid, state.init_pid) == (30000, 24914)


@pytest.mark.parametrize("data, fds, reason", [
    (b"{", 1, "not JSON"),
    (b"\xff\xfe", 1, "not JSON"),
    (RUNC.replace(b'"seccompFd"', b'"other"'), 1, "no seccompFd"),
    (RUNC, 0, "1 fds named, 0 attached"),
    (RUNC.replace(b'"id":"rt1"', b'"id":7'), 1, "state.id"),
    (RUNC.replace(b'"pid":24914,"bundle"', b'"pid":true,"bundle"'), 1, "state.pid"),
    (RUNC.replace(b'"pid":24914,"bundle"', b'"pid":-4,"bundle"'), 1, "state.pid"),
    (b" " * (300 * 1024) + RUNC, 1, "more than"),
])
def test_bad_states_are_refused(data: bytes, fds: int, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_state(data, fds)


def test_completeness_needs_a_whole_object() -> None:
    assert not _complete(RUNC[:-1]) and not _complete(RUNC[:40]) and _complete(RUNC + b"\n")


# --- rendering -----------------------------------------------------------------------------

def _policy(config: dict[str, str] | None = None) -> ContainerPolicy:
    return ContainerPolicy.from_profile(load_profile("default", Paths().profile_search_path),
                                        config)


def _matches(entry: dict[str, Any], args: tuple[int, ...]) -> bool:
    """An OCI rule evaluated as libseccomp does: every comparison holds."""
    for arg in entry.get("args") or []:
        x = args[arg["index"]]
        op = arg["op"]
        if op == "SCMP_CMP_MASKED_EQ":
            ok = x & arg["value"] == arg["valueTwo"]
        elif op == "SCMP_CMP_EQ":
            ok = x == arg["value"]
        elif op == "SCMP_CMP_NE":
            ok = x != arg["value"]
        else:
            raise AssertionError(op)
        if not ok:
            return False
    return True


def _action(profile: dict[str, Any], syscall: str, args: tuple[int, ...]) -> set[str]:
    found = {e["action"] for e in profile["syscalls"]
             if syscall in e["names"] and _matches(e, args)}
    return found or {profile["defaultAction"]}


def _allowlist_base() -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
        {"names": ["read", "mknod", "mknodat", "mount", "fsopen", "sysinfo"],
         "action": "SCMP_ACT_ALLOW", "args": []}]}


def test_over_an_allowlist_each_call_meets_exactly_one_action() -> None:
    """Trapped exactly where our conditions hold; the base's ALLOW everywhere else
    (a FIFO, a whiteout c 0:0, a bind mount), never its default."""
    rendered = oci_profile.render(_policy({"security.syscalls.intercept.mount": "true"}),
                                  _allowlist_base(), listener_path="/s", metadata="profile=x")
    profile = rendered.profile
    assert not rendered.notes
    types = [t << 12 for t in range(16)]
    for mode_type, dev in itertools.product(types, (0, 1, 0x103, 1 << 32)):
        mode = mode_type | 0o644
        want = ({"SCMP_ACT_NOTIFY"} if mode_type in (stat.S_IFCHR, stat.S_IFBLK) and dev
                else {"SCMP_ACT_ALLOW"})
        assert _action(profile, "mknodat", (3, 0, mode, dev, 0, 0)) == want, (mode, dev)
        assert _action(profile, "mknod", (0, mode, dev, 0, 0, 0)) == want, (mode, dev)
    for flags in (0, 4096, 32, 1 << 14, 1 << 20, 0xC0ED0000, 0xC0ED0000 | 4096):
        # The old magic is trapped whatever follows it (judged after it is dropped).
        new_superblock = flags & 0x1E3020 == 0 or flags & 0xFFFF0000 == 0xC0ED0000
        want = {"SCMP_ACT_NOTIFY"} if new_superblock else {"SCMP_ACT_ALLOW"}
        assert _action(profile, "mount", (0, 0, 0, flags, 0, 0)) == want, hex(flags)
    assert _action(profile, "fsopen", (0,) * 6) == {"SCMP_ACT_NOTIFY"}
    assert _action(profile, "read", (0,) * 6) == {"SCMP_ACT_ALLOW"}
    assert (profile["listenerPath"], profile["listenerMetadata"]) == ("/s", "profile=x")


def test_each_rule_names_an_argument_once() -> None:
    """runc turns repeated indexes into an OR: never render one."""
    rendered = oci_profile.render(_policy({"security.syscalls.intercept.mount": "true"}),
                                  _allowlist_base(), listener_path="/s", metadata="")
    for entry in rendered.profile["syscalls"]:
        indexes = [a["index"] for a in entry.get("args") or []]
        assert len(indexes) == len(set(indexes)), entry


def test_a_syscall_the_base_refuses_is_not_trapped() -> None:
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["mknodat"], "action": "SCMP_ACT_ALLOW"}]}
    rendered = oci_profile.render(_policy(), base, listener_path="/s", metadata="")
    assert [n for n in rendered.notes if n.startswith("mknod:")], rendered.notes
    assert not [e for e in rendered.profile["syscalls"] if "mknod" in e["names"]]
    assert {e["action"] for e in rendered.profile["syscalls"]
            if "mknodat" in e["names"]} == {"SCMP_ACT_NOTIFY", "SCMP_ACT_ALLOW"}


def test_runtime_syscalls_are_never_notified(monkeypatch: pytest.MonkeyPatch) -> None:
    from lxc_notify_plugin.policy import oci_profile as module

    monkeypatch.setattr(module, "notify_rules", lambda policy: [Rule("write", None)])
    with pytest.raises(ConfigError, match="runtime calls this itself"):
        module.render(_policy(), module.minimal_base(), listener_path="/s", metadata="")


def test_flags_are_only_set_when_asked() -> None:
    plain = oci_profile.render(_policy(), oci_profile.minimal_base(), listener_path="/s",
                               metadata="")
    assert "flags" not in plain.profile
    killable = oci_profile.render(_policy(), oci_profile.minimal_base(), listener_path="/s",
                                  metadata="", flags=(oci_profile.WAIT_KILLABLE_RECV,))
    assert killable.profile["flags"] == [oci_profile.WAIT_KILLABLE_RECV]


def test_complement_of_a_conjunction() -> None:
    conj = oci_profile._atoms(ArgMatch(1, 0o020000, mask=0o170000)) | oci_profile._atoms(
        ArgMatch(2, 0, NE))
    rest = oci_profile.complement([conj])
    assert len(rest) == 5  # four type bits that differ, or dev == 0


@pytest.mark.parametrize("base", ["minimal", "distribution"])
def test_libseccomp_builds_the_rendered_profile(base: str) -> None:
    """What runc and crun hand libseccomp, built with it (never loaded)."""
    if base == "distribution":
        # setup.sh installs golang-github-containers-common, which ships it.
        require(Path(oci_profile.DISTRIBUTION_BASE).is_file(), oci_profile.DISTRIBUTION_BASE)
        source = json.loads(Path(oci_profile.DISTRIBUTION_BASE).read_text())
    else:
        source = oci_profile.minimal_base()
    profile = oci_profile.render(_policy({"security.syscalls.intercept.mount": "true"}), source,
                                 listener_path="/s", metadata="").profile
    ops = {"SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ, "SCMP_CMP_EQ": pyseccomp.EQ,
           "SCMP_CMP_NE": pyseccomp.NE}
    filt = pyseccomp.SyscallFilter(pyseccomp.ERRNO(38))
    for entry in profile["syscalls"]:
        action = {"SCMP_ACT_ALLOW": pyseccomp.ALLOW, "SCMP_ACT_NOTIFY": pyseccomp.NOTIFY}.get(
            entry["action"], pyseccomp.ERRNO(entry.get("errnoRet", 1)))
        if entry.get("includes") or entry.get("excludes"):
            continue  # podman's conditions (capabilities, arches): not libseccomp's
        args = [pyseccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
                for a in entry.get("args") or []]
        for name in entry["names"]:
            if entry["action"] == "SCMP_ACT_NOTIFY" or name in OURS:
                filt.add_rule(action, name, *args)  # ours must all build
            else:
                # The base lists syscalls newer than this libseccomp: not ours to check.
                with contextlib.suppress(RuntimeError, OSError, ValueError):
                    filt.add_rule(action, name, *args)
