"""Which lxc-attach runs Sandbox.attach may retry: only those proven never to have started."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from lxc_notify_plugin.tools import sandbox
from lxc_notify_plugin.tools.sandbox import (
    AttachOutcome,
    Sandbox,
    SandboxError,
    classify_attach,
    copied_config,
    lxc_attach_error,
    split_status,
)

M = "lxc-notify-sandbox-0123abcd"
# As LXC 5.0.2's log_append_stderr prints them (src/lxc/log.c); Debian's build
# names files ../src/lxc/... (seen, attaching to a container that does not run).
ATTACH_FAILED = ("lxc-attach: c1: ../src/lxc/attach.c: get_attach_context: 406 Connection "
                 "refused - Failed to get init pid\nlxc-attach: c1: ../src/lxc/attach.c: "
                 "lxc_attach: 1470 Connection refused - Failed to get attach context\n")
NO_LISTENER = ("lxc-attach: c1: ../src/lxc/commands.c: lxc_cmd_seccomp_notify_add_listener: "
               "1615 Connection refused - Failed to add seccomp listener\n")


def test_split_status_keeps_the_commands_output() -> None:
    assert split_status(f"{M}\nok\n{M} status 0\n", M) == ("ok\n", 0)
    assert split_status(f"{M}\nno newline{M} status 2\n", M) == ("no newline", 2)
    assert split_status(f"{M}\nkilled\n", M) == ("killed\n", None)


@pytest.mark.parametrize(("returncode", "stdout", "stderr", "outcome"), [
    (0, f"{M}\nok\n", "", AttachOutcome.DONE),
    (0, f"{M}\n", "sh: a warning of the command's own\n", AttachOutcome.DONE),
    # The command exited 0 (the wrapper says so) and lxc-attach 1, silently (seen).
    (1, f"{M}\nok\n{M} status 0\n", "", AttachOutcome.DONE),
    (1, f"{M}\nok{M} status 0\n", "", AttachOutcome.DONE),  # no newline of its own
    (1, f"{M}\nEPERM\n{M} status 1\n", "", AttachOutcome.FAILED),
    (1, f"{M}\nok\n{M} status 0\n", NO_LISTENER, AttachOutcome.FAILED),
    # No marker: LXC failed before the command, with or without saying so.
    (1, "", "", AttachOutcome.NEVER_RAN),
    (1, "", ATTACH_FAILED, AttachOutcome.NEVER_RAN),
    (1, "lxc-notify-sandbox-another\n", "", AttachOutcome.NEVER_RAN),
    # lxc-attach aborting before it attached (seen with LXC 5.0.2).
    (-6, "", "Device or resource busy - Failed to rexec as memfd\nmunmap_chunk(): invalid "
     "pointer\n", AttachOutcome.NEVER_RAN),
    # The marker: the command started, so its run is final.
    (1, f"{M}\nEPERM\n", "", AttachOutcome.FAILED),        # its own status 1, or LXC's after it
    (1, f"{M}\nENOSYS\n", NO_LISTENER, AttachOutcome.FAILED),  # ran unsupervised
    (0, f"{M}\nok\n", NO_LISTENER, AttachOutcome.FAILED),
    (2, f"{M}\n", "", AttachOutcome.FAILED),
    # No marker and not LXC's status 1: nothing proves it never ran.
    (0, "", "", AttachOutcome.FAILED),
    (127, "", "sh: /bin/nodeprobe: not found\n", AttachOutcome.FAILED),
    (137, "", "", AttachOutcome.FAILED),
])
def test_classify_attach(returncode: int, stdout: str, stderr: str,
                         outcome: AttachOutcome) -> None:
    assert classify_attach(returncode, stdout, stderr, M) is outcome


def test_lxc_attach_errors_are_told_from_the_commands_own_stderr() -> None:
    assert lxc_attach_error("noise\n" + NO_LISTENER) == NO_LISTENER.strip()
    assert lxc_attach_error(ATTACH_FAILED) == ATTACH_FAILED.splitlines()[0]
    assert lxc_attach_error("lxc-attach: attach.c: do_attach: 1376 Failed\n") is not None
    for own in ("sh: can't cd to /nowhere\n", "lxc-attach: is only a word here\n",
                "  lxc-attach: c1: attach.c: do_attach: 1376 indented, so not LXC's\n"):
        assert lxc_attach_error(own) is None


Fake = Callable[[list[str]], subprocess.CompletedProcess[str]]
Install = Callable[[list[Fake]], list[list[str]]]


@pytest.fixture
def attach_calls(monkeypatch: pytest.MonkeyPatch) -> Install:
    """Replace lxc-attach by one fake per run; each gets the command after "--"."""
    def install(fakes: list[Fake]) -> list[list[str]]:
        calls: list[list[str]] = []

        def run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
            assert argv[0] == "lxc-attach"
            command = list(argv[list(argv).index("--") + 1:])
            calls.append(command)
            return fakes[len(calls) - 1](command)

        monkeypatch.setattr(sandbox, "_run", run)
        monkeypatch.setattr(time, "sleep", lambda seconds: None)
        return calls
    return install


def on_host(command: list[str]) -> subprocess.CompletedProcess[str]:
    """The command as the container would run it (the wrapper is plain sh)."""
    return subprocess.run(command, capture_output=True, text=True, timeout=10)


def never_started(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(command, 1, "", ATTACH_FAILED)


def unsupervised(command: list[str]) -> subprocess.CompletedProcess[str]:
    ran = on_host(command)
    return subprocess.CompletedProcess(command, 1, ran.stdout, ran.stderr + NO_LISTENER)


def test_attach_returns_the_commands_stdout_without_the_marker(attach_calls: Install) -> None:
    calls = attach_calls([on_host, on_host])
    box = Sandbox()
    assert box.attach("/bin/sh", "-c", "echo one; echo two >&2") == "one\n"
    assert box.attach("/bin/pwd", cwd="/tmp") == "/tmp\n"
    assert len(calls) == 2


def test_attach_retries_only_runs_that_never_started(attach_calls: Install,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    calls = attach_calls([never_started, never_started, on_host])
    assert Sandbox().attach("/bin/echo", "hi") == "hi\n"
    assert len(calls) == 3
    assert capsys.readouterr().err.count("retrying") == 2

    calls = attach_calls([never_started] * 3)
    with pytest.raises(SandboxError, match="failed 3 times before running /bin/echo"):
        Sandbox().attach("/bin/echo", "hi")
    assert len(calls) == 3
    assert capsys.readouterr().err.count("retrying") == 2


@pytest.mark.parametrize(("fake", "what"), [
    (on_host, "ran and failed"),
    (unsupervised, "may have run unsupervised"),
])
def test_attach_fails_loudly_once_the_command_ran(attach_calls: Install, fake: Fake,
                                                  what: str) -> None:
    calls = attach_calls([fake, on_host])
    with pytest.raises(SandboxError, match=what) as raised:
        Sandbox().attach("/bin/sh", "-c", "echo out; echo err >&2; exit 1")
    assert len(calls) == 1
    message = str(raised.value)
    assert "--- stdout ---\nout\n--- stderr ---\nerr\n" in message
    assert "lxc-notify-sandbox-" not in message


def test_an_idempotent_probe_run_unsupervised_is_retried(
        attach_calls: Install, capsys: pytest.CaptureFixture[str]) -> None:
    """nodeprobe never exits 1: status 1 with ENOSYS printed is LXC's unsupervised
    run, which changed nothing; only such commands say so, and only they retry."""
    def enosys_exit_1(command: list[str]) -> subprocess.CompletedProcess[str]:
        ran = on_host([*command[:-2], "/bin/sh", "-c", "echo ENOSYS; exit 2"])  # as nodeprobe
        return subprocess.CompletedProcess(command, 1, ran.stdout, "")

    calls = attach_calls([enosys_exit_1, on_host])
    assert Sandbox().attach("/bin/echo", "ok", idempotent_unsupervised=True) == "ok\n"
    assert len(calls) == 2 and "unsupervised" in capsys.readouterr().err
    attach_calls([enosys_exit_1, on_host])
    with pytest.raises(SandboxError, match="ran and failed"):
        Sandbox().attach("/bin/echo", "ok")


# As lxc-create 5.0.2 wrote it for `-P /tmp/p -n template -t busybox -f base.conf`.
TEMPLATE_CONFIG = """\
# Template used to create this container: /usr/share/lxc/templates/lxc-busybox
lxc.net.0.type = empty
lxc.idmap = u 0 100000 65536
lxc.rootfs.path = dir:/tmp/p/template/rootfs
lxc.signal.halt = SIGUSR1
lxc.uts.name = "template"
lxc.autodev = 1
"""


def test_a_copys_config_is_what_lxc_create_writes() -> None:
    config = copied_config(TEMPLATE_CONFIG, Path("/tmp/p/template"),
                           Path("/var/lib/lxc/box-1"), "# mine\n\nlxc.tty.max = 2\n")
    assert config == TEMPLATE_CONFIG.replace(
        "lxc.rootfs.path = dir:/tmp/p/template/rootfs\n",
        "# mine\nlxc.tty.max = 2\nlxc.rootfs.path = dir:/var/lib/lxc/box-1/rootfs\n",
    ).replace('"template"', '"box-1"')


@pytest.mark.parametrize("line", ["lxc.idmap = u 0 200000 65536", "lxc.rootfs.path=dir:/x"])
def test_a_copy_refuses_what_its_files_depend_on(line: str) -> None:
    with pytest.raises(SandboxError, match="cannot set"):
        copied_config(TEMPLATE_CONFIG, Path("/tmp/p/template"), Path("/var/lib/lxc/b"), line)


def test_a_template_config_of_another_shape_is_refused() -> None:
    with pytest.raises(SandboxError, match="not the busybox template's"):
        copied_config(TEMPLATE_CONFIG.replace('"template"', "template"),
                      Path("/tmp/p/template"), Path("/var/lib/lxc/b"), "")
