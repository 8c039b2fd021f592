"""The ``lxc-notify`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from .admin import daemon, lxc_config
from .errors import LxcNotifyError
from .host.memory import lxcfs_running
from .kernel import features
from .paths import Paths
from .service import config as daemon_config
from .service.config import DaemonConfig

DEFAULTS = Paths()


def _settings(args: argparse.Namespace) -> DaemonConfig:
    """daemon.toml (``--config``, or the default file if present) with the command
    line's options laid over it; read once per command."""
    cached: DaemonConfig | None = getattr(args, "_settings", None)
    if cached is not None:
        return cached
    config = daemon_config.load(Path(args.config) if getattr(args, "config", None) else None)
    level = getattr(args, "log_level", None) or ("debug" if getattr(args, "verbose", False)
                                                  else config.log_level)
    paths = daemon_config.with_paths(config.paths, _path_values(args))
    config = replace(config, paths=paths, log_level=level)
    args._settings = config
    return config


def _paths(args: argparse.Namespace) -> Paths:
    return _settings(args).paths


class _JournalFormatter(logging.Formatter):
    """Under systemd, stderr goes to journald: a ``<N>`` prefix gives each line its
    priority (sd-daemon(3)) and journald adds the time itself."""

    _PRIORITY: Final = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                        logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def configure_logging(level: str) -> None:
    """Logs go to stderr, with levels; to journald with priorities under systemd."""
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):  # set by systemd for a service's stderr
        handler.setFormatter(_JournalFormatter("%(threadName)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(daemon_config.LOG_LEVELS[level])


def cmd_daemon(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    missing = features.missing_required()
    if missing:
        for feature in missing:
            print(f"lxc-notify: this kernel lacks {feature.name} (Linux {feature.since}), "
                  f"needed for {feature.used_for}", file=sys.stderr)
        return 1
    given = bool(getattr(args, "log_level", None) or getattr(args, "verbose", False))
    supervisor = Supervisor(_settings(args), log_level_given=given)
    # Handlers before bind(): once the pid file exists, a SIGHUP may come.  Each
    # only writes a byte to the supervisor's wake pipe: the work is done by serve().
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stop())
    signal.signal(signal.SIGHUP, lambda *_: supervisor.request_reload())
    signal.signal(signal.SIGUSR1, lambda *_: supervisor.request_status())
    supervisor.bind()
    supervisor.serve()
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    paths = _paths(args)
    record = lxc_config.enable(args.name, args.profile, paths)
    print(f"{args.name}: interception enabled with profile {record.profile!r}; "
          f"lxc-start -n {args.name} is now supervised")
    if not daemon.daemon_running(paths):
        # LXC then reports the start as a success while the container stays
        # STOPPED ("Failed to connect to seccomp proxy" in its log).
        print(f"lxc-notify: WARNING: no supervisor listens on {paths.socket}: until one "
              f"does, lxc-start -n {args.name} exits 0 but the container stays STOPPED. "
              "Run it as a service: `lxc-notify service install` (or `lxc-notify daemon`).",
              file=sys.stderr)
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    removed = lxc_config.disable(args.name, _paths(args))
    print(f"{args.name}: interception {'disabled' if removed else 'was not enabled'}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    lxc_config.start(args.name, args.profile, _paths(args), Path(args.log_file),
                     _settings(args).file)
    print(f"{args.name}: started, supervised")
    return 0


def cmd_profile_compile(args: argparse.Namespace) -> int:
    from .policy.effective import ContainerPolicy
    from .policy.profile import load_profile

    profile = load_profile(args.profile, _paths(args).profile_search_path)
    sys.stdout.write(lxc_config.compiled(ContainerPolicy.from_profile(profile)))
    return 0


def cmd_profile_check(args: argparse.Namespace) -> int:
    """Check every file; report each bad one on one line; non-zero if any is bad."""
    from .policy import mknod
    from .policy.effective import ContainerPolicy
    from .policy.lxc_policy import check_with_libseccomp
    from .policy.profile import load_profile

    failed = 0
    for file in args.files:
        try:
            path = file if "/" in file or file.endswith(".toml") else f"./{file}"
            profile = load_profile(path, _paths(args).profile_search_path)
            check_with_libseccomp(ContainerPolicy.from_profile(profile))
            devices = profile.of(mknod.FAMILY).devices
            print(f"{file}: ok ({profile.name}: {len(devices)} device rules, "
                  f"intercepts {', '.join(sorted(profile.intercept)) or 'nothing'})")
        except LxcNotifyError as err:
            print(f"lxc-notify: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_config_set(args: argparse.Namespace) -> int:
    print(lxc_config.config_set(args.name, args.key, args.value, _paths(args)))
    if (args.key == "security.syscalls.intercept.sysinfo" and args.value.lower() == "true"
            and not lxcfs_running()):
        print(f"lxc-notify: lxcfs is not running here. {LXCFS_ABSENT}", file=sys.stderr)
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    print(lxc_config.config_set(args.name, args.key, None, _paths(args)))
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    print(lxc_config.config_get(args.name, args.key, _paths(args)))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    for line in lxc_config.config_show(args.name, _paths(args), args.effective):
        print(line)
    return 0


LXCFS_ABSENT = ("With sysinfo interception, free and top read their totals from "
                "sysinfo(2) (the container's limits) but cached and available memory from "
                "/proc/meminfo, which without lxcfs is the host's: busybox free then shows "
                "nonsense. Install lxcfs and include LXC's 00-lxcfs.conf.")


def cmd_status(args: argparse.Namespace) -> int:
    status = daemon.daemon_status(_paths(args))
    if status is None:
        print("lxc-notify: no running supervisor answered", file=sys.stderr)
        return 1
    udev, audit = status["udev"], status.get("audit") or {}
    print(f"supervisor pid {status['pid']}, {status['reloads']} reloads, udev "
          + (f"followed ({udev['devices']} device nodes)" if udev["running"] else "not running"))
    print(f"audit log {audit.get('path') or 'off'} ({audit.get('written', 0)} lines, "
          f"{audit.get('dropped', 0)} dropped); metrics {status.get('metrics') or 'off'}")
    print(f"{'container':24} {'state':26} {'profile':10} {'intercepts':12} "
          f"{'p50/p99 us':>13}  requests")
    for c in sorted(status["containers"], key=lambda c: (c["name"], c["state"])):
        requests = ", ".join(f"{k} {v}" for k, v in sorted(c["requests"].items())) or "-"
        latency = c.get("latency_us") or {}
        p50, p99 = latency.get("p50"), latency.get("p99")
        quantiles = f"{p50:.0f}/{p99:.0f}" if p50 is not None and p99 is not None else "-"
        intercept = ",".join(c["intercept"]) if c["intercept"] is not None else "?"
        print(f"{c['name']:24} {c['state']:26} {Path(c['profile']).stem:10} "
              f"{intercept or '-':12} {quantiles:>13}  {requests}")
    if any(c["state"] in (lxc_config.DESTROYED, lxc_config.NOT_ENABLED)
           for c in status["containers"]):
        print("(destroyed and not-enabled containers' state is removed by `lxc-notify prune`)")
    host = status.get("host") or {}
    if host:
        print(f"kernel {host['release']}:")
        _print_features(host["features"])
        if not host.get("lxcfs"):
            print(f"lxcfs: not running here. {LXCFS_ABSENT}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    print(f"kernel {os.uname().release}:")
    _print_features(features.report())
    return 0


def _print_features(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        present = {True: "yes", False: "no", None: "not seen yet"}.get(row["present"],
                                                                      row["present"])
        without = "" if row["present"] is True else f" (without it: {row['without']})"
        print(f"  {row['name']:28} {present}{without}")


def cmd_prune(args: argparse.Namespace) -> int:
    paths = _paths(args)
    removed = lxc_config.prune(paths)
    for name, why in removed:
        print(f"{name}: {why}: state removed")
    if removed and daemon.signal_reload(paths) is None:
        print("(no supervisor running: nothing else to tell)")
    if not removed:
        print("nothing to prune")
    return 0


def _path_values(args: argparse.Namespace) -> dict[str, str]:
    """The path options given on this command line, by daemon.toml key."""
    return {key: value for key in daemon_config.PATH_FIELDS
            if (value := getattr(args, key, None)) is not None}


def _path_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The path options given on this command line, as the daemon must be given them."""
    given: list[str] = []
    for key, value in _path_values(args).items():
        given += [f"--{key.replace('_', '-')}", str(Path(value).resolve())]
    return tuple(given)


def cmd_service(args: argparse.Namespace) -> int:
    from .service import unit

    config = Path(args.config) if getattr(args, "config", None) else None
    if args.action == "unit":
        sys.stdout.write(unit.render(config=config, options=_path_options(args)))
        sys.stdout.write("\n" + unit.render_socket(_paths(args)))
    elif args.action == "capabilities":
        for name, why in unit.capabilities().items():
            print(f"{name:20} {why}")
    elif args.action == "install":
        _settings(args)  # a bad daemon.toml fails here, before anything is written
        for line in unit.install(_paths(args), Path(args.unit_dir), start=not args.no_start,
                                 config=config, options=_path_options(args)):
            print(line)
    else:
        for line in unit.remove(Path(args.unit_dir)):
            print(line)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    refused = daemon.signal_reload(_paths(args))
    if refused is None:
        print("lxc-notify: no running supervisor confirmed a reload", file=sys.stderr)
        return 1
    if refused:
        print(f"lxc-notify: reloaded, but {', '.join(refused)} kept the old policy (the new "
              "one fails its checks; the supervisor's log says why)", file=sys.stderr)
        return 1
    print("reloaded")
    return 0


def cmd_oci_seccomp(args: argparse.Namespace) -> int:
    """An OCI seccomp profile (``linux.seccomp``) whose notifications reach this daemon."""
    import json

    from .errors import ConfigError
    from .policy import oci_profile
    from .policy.effective import ContainerPolicy
    from .policy.profile import load_profile
    from .transport.oci_state import PROFILE_KEY, profile_name_ok

    paths = _paths(args)
    if not profile_name_ok(args.profile):
        raise ConfigError("<command line>", "--profile", f"{args.profile!r} is not a profile "
                          "name (the runtime's state names it; files are not accepted)")
    policy = ContainerPolicy.from_profile(load_profile(args.profile, paths.profile_search_path))
    base_file = args.base
    if base_file is None and Path(oci_profile.DISTRIBUTION_BASE).is_file():
        base_file = oci_profile.DISTRIBUTION_BASE
    if base_file in (None, "minimal"):
        base, source = oci_profile.minimal_base(), "<minimal base>"
    else:
        try:
            base, source = json.loads(Path(base_file).read_text()), base_file
        except (OSError, ValueError) as err:
            raise ConfigError(base_file, None, f"cannot read a JSON base: {err}") from err
        if not isinstance(base, dict):
            raise ConfigError(base_file, None, "not a JSON object")
    flags: tuple[str, ...] = ()
    if args.wait_killable:
        if features.have("seccomp-wait-killable-recv"):
            flags = (oci_profile.WAIT_KILLABLE_RECV,)
        else:
            print("lxc-notify: this kernel has no SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV "
                  "(Linux 6.0): the profile goes without it", file=sys.stderr)
    rendered = oci_profile.render(policy, base, listener_path=str(paths.agent_socket),
                                  metadata=f"{PROFILE_KEY}={args.profile}", flags=flags,
                                  source=source)
    for note in rendered.notes:
        print(f"lxc-notify: not trapped: {note}", file=sys.stderr)
    json.dump(rendered.profile, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .tools.demo import run

    return run()


def cmd_udev_list(args: argparse.Namespace) -> int:
    import pyudev

    from .host.udev import PROFILES_PROPERTY, delegable, udev_running

    paths = _paths(args)
    if not udev_running(paths.udev_control):
        print(f"udev is not running (no {paths.udev_control}): no device can be listed, "
              "and the supervisor serves static [[devices]] entries only", file=sys.stderr)
        return 0
    rows = sorted(delegable(pyudev.Context()), key=lambda d: (d.kind, d.major, d.minor))
    print(f"{'type':4} {'numbers':>9}  {'node':24} profiles")
    for device in rows:
        profiles = device.properties.get(PROFILES_PROPERTY, "")
        print(f"{device.kind:4} {device.major:>4}:{device.minor:<4}  "
              f"{device.devnode or '-':24} {profiles or '-'}")
    if not rows:
        print("(no device is tagged lxc_notify: see `lxc-notify udev install`)")
    return 0


def cmd_udev_install(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from .host.udev import RULES_FILE, RULES_SUBSYSTEMS, udev_running

    target = Path(args.rules_dir) / RULES_FILE.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RULES_FILE, target)
    print(f"installed {target}")
    if not udev_running(_paths(args).udev_control):
        print("udev is not running: the rules apply when it starts")
        return 0
    trigger = ["udevadm", "trigger", "--action=change",
               *(f"--subsystem-match={s}" for s in RULES_SUBSYSTEMS)]
    for command in (["udevadm", "control", "--reload"], trigger,
                    ["udevadm", "settle", "--timeout=30"]):
        subprocess.run(command, check=True)
    print("udev reloaded its rules and re-triggered devices")
    return 0


def _subparsers_with(common: argparse.ArgumentParser) -> type[argparse.Action]:
    """A subparsers action whose every parser, at any depth, takes ``common``'s options."""

    class WithCommon(argparse._SubParsersAction):  # type: ignore[type-arg]
        def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
            kwargs["parents"] = [*kwargs.get("parents", ()), common]
            kwargs.setdefault("allow_abbrev", False)  # `--profile` must not mean --profile-dir
            parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)
            parser.register("action", "parsers", WithCommon)
            return parser

    return WithCommon


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the subcommand
    # (``lxc-notify -v daemon`` and ``lxc-notify daemon -v``): every parser gets
    # them with no default, so a later one never resets an earlier one's value.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    options = common.add_argument_group("common options (before or after the command)")
    options.add_argument("--config", help=f"daemon configuration (default "
                         f"{daemon_config.DEFAULT_FILE}, if present)")
    options.add_argument("--socket", help=f"the supervisor's socket (default {DEFAULTS.socket})")
    options.add_argument("--state-dir", help=f"per-container state (default "
                         f"{DEFAULTS.state_dir})")
    options.add_argument("--profile-dir", help="admin profiles, which override shipped ones "
                         f"(default {DEFAULTS.admin_profiles})")
    options.add_argument("--lxc-path", help="LXC's container directory")
    options.add_argument("--udev-control", help="udevd's control socket, whose presence "
                         f"means udev runs (default {DEFAULTS.udev_control})")
    options.add_argument("--agent-socket", help="the OCI runtimes' seccomp agent socket "
                         f"(default: beside --socket, {DEFAULTS.agent_socket})")
    options.add_argument("--log-level", choices=sorted(daemon_config.LOG_LEVELS),
                         help="log what is at least this severe (default info)")
    options.add_argument("-v", "--verbose", action="store_true",
                         help="log every decision (--log-level debug)")
    parser = argparse.ArgumentParser(prog="lxc-notify", parents=[common], allow_abbrev=False,
                                     description=(
        "Supervise unprivileged LXC containers through seccomp user notification."))
    # Every subparser below takes the common options too.
    parser.register("action", "parsers", _subparsers_with(common))
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("daemon", help="run the supervisor in the foreground").set_defaults(
        func=cmd_daemon)
    enable = sub.add_parser("enable", help="supervise NAME at every lxc-start")
    enable.add_argument("name")
    enable.add_argument("--profile", default=None, help="profile name or file (default: default)")
    enable.set_defaults(func=cmd_enable)
    disable = sub.add_parser("disable", help="undo enable")
    disable.add_argument("name")
    disable.set_defaults(func=cmd_disable)
    start = sub.add_parser("start", help="start NAME supervised (this start only)")
    start.add_argument("name")
    start.add_argument("--profile", default=None)
    start.add_argument("--log-file", default="/var/log/lxc-notify.log",
                       help="where a daemon started by this command logs (default %(default)s)")
    start.set_defaults(func=cmd_start)
    sub.add_parser("demo", help="show interception working in a throw-away container"
                   ).set_defaults(func=cmd_demo)
    profile = sub.add_parser("profile", help="profiles").add_subparsers(dest="action",
                                                                       required=True)
    compile_ = profile.add_parser("compile", help="print the LXC seccomp policy of a profile")
    compile_.add_argument("profile")
    compile_.set_defaults(func=cmd_profile_compile)
    check = profile.add_parser("check", help="validate profile files (and their parents)")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_profile_check)

    config = sub.add_parser("config", help="LXD's security.syscalls.intercept.* keys"
                            ).add_subparsers(dest="action", required=True)
    config_set = config.add_parser("set", help="set KEY to VALUE for container NAME")
    config_set.add_argument("name")
    config_set.add_argument("key")
    config_set.add_argument("value")
    config_set.set_defaults(func=cmd_config_set)
    for action, func, help_ in (("unset", cmd_config_unset, "remove KEY from NAME"),
                                ("get", cmd_config_get, "print KEY of NAME")):
        parser_ = config.add_parser(action, help=help_)
        parser_.add_argument("name")
        parser_.add_argument("key")
        parser_.set_defaults(func=func)
    show = config.add_parser("show", help="the keys set on NAME")
    show.add_argument("name")
    show.add_argument("--effective", action="store_true",
                      help="the merged policy, and where each value came from")
    show.set_defaults(func=cmd_config_show)
    oci = sub.add_parser("oci", help="OCI runtimes (runc, crun, podman)"
                         ).add_subparsers(dest="action", required=True)
    oci_seccomp = oci.add_parser("seccomp", help="print an OCI seccomp profile that hands "
                                 "the profile's calls to this daemon")
    oci_seccomp.add_argument("--profile", default="default")
    oci_seccomp.add_argument("--base", default=None, help="the OCI seccomp JSON to add to "
                             f"(default {'/usr/share/containers/seccomp.json'} if present; "
                             "'minimal': allow by default)")
    oci_seccomp.add_argument("--wait-killable", action="store_true", help=(
        "set SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (crun; runc 1.1.5 refuses every flag)"))
    oci_seccomp.set_defaults(func=cmd_oci_seccomp)
    sub.add_parser("reload", help="make the running supervisor re-read policy (SIGHUP)"
                   ).set_defaults(func=cmd_reload)
    sub.add_parser("status", help="containers, their state, request counts and latency "
                   "(SIGUSR1)").set_defaults(func=cmd_status)
    sub.add_parser("features", help="what this kernel has that the daemon uses, probed "
                   "now").set_defaults(func=cmd_features)
    sub.add_parser("prune", help="remove the state of destroyed containers and of those "
                   "no longer enabled").set_defaults(func=cmd_prune)
    service = sub.add_parser("service", help="the systemd unit").add_subparsers(
        dest="action", required=True)
    for action, help_ in (("install", "install, enable and start the unit"),
                          ("remove", "stop, disable and remove the unit")):
        parser_ = service.add_parser(action, help=help_)
        parser_.add_argument("--unit-dir", default="/etc/systemd/system",
                             help="where the units are written (default %(default)s; "
                             "one outside systemd's search path is linked into it)")
        if action == "install":
            parser_.add_argument("--no-start", action="store_true",
                                 help="enable only; start at next boot")
        parser_.set_defaults(func=cmd_service)
    service.add_parser("unit", help="print the units as install writes them").set_defaults(
        func=cmd_service)
    service.add_parser("capabilities", help="the unit's capabilities, and why each"
                       ).set_defaults(func=cmd_service)
    udev = sub.add_parser("udev", help="udev rules for delegable devices"
                          ).add_subparsers(dest="action", required=True)
    udev.add_parser("list", help="delegable devices present now").set_defaults(
        func=cmd_udev_list)
    install = udev.add_parser("install", help="install the rules, reload udev, re-trigger")
    install.add_argument("--rules-dir", default="/etc/udev/rules.d")
    install.set_defaults(func=cmd_udev_install)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(_settings(args).log_level)
        return int(args.func(args))
    except LxcNotifyError as err:
        print(f"lxc-notify: {err}", file=sys.stderr)
        return 1
