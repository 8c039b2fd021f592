"""The ``lxc-notify`` command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from . import lxc_config
from .errors import LxcNotifyError
from .paths import Paths

DEFAULTS = Paths()


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(socket=Path(args.socket), state_dir=Path(args.state_dir),
                 admin_profiles=Path(args.profile_dir), lxc_path=args.lxc_path)


def cmd_daemon(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    supervisor = Supervisor(_paths(args))
    supervisor.bind()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.stop())
    supervisor.serve()
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    record = lxc_config.enable(args.name, args.profile, _paths(args))
    print(f"{args.name}: interception enabled with profile {record.profile!r}; "
          f"lxc-start -n {args.name} is now supervised (run `lxc-notify daemon`)")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    removed = lxc_config.disable(args.name, _paths(args))
    print(f"{args.name}: interception {'disabled' if removed else 'was not enabled'}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    lxc_config.start(args.name, args.profile, _paths(args), Path(args.log_file))
    print(f"{args.name}: started, supervised")
    return 0


def cmd_profile_compile(args: argparse.Namespace) -> int:
    from .policy.lxc_policy import compile_policy
    from .policy.profile import load_profile

    sys.stdout.write(compile_policy(load_profile(args.profile, _paths(args).profile_search_path)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lxc-notify", description=(
        "Supervise unprivileged LXC containers through seccomp user notification."))
    parser.add_argument("--socket", default=str(DEFAULTS.socket),
                        help="the supervisor's socket (default %(default)s)")
    parser.add_argument("--state-dir", default=str(DEFAULTS.state_dir),
                        help="per-container state (default %(default)s)")
    parser.add_argument("--profile-dir", default=str(DEFAULTS.admin_profiles),
                        help="admin profiles, which override shipped ones (default %(default)s)")
    parser.add_argument("--lxc-path", default=None, help="LXC's container directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every decision")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except LxcNotifyError as err:
        print(f"lxc-notify: {err}", file=sys.stderr)
        return 1
