"""What one device decision costs: static entries and udev rules, per request.

The supervisor decides from an index built once per profile and a host
device index kept by the udev monitor; this measures the decision alone, in
nanoseconds, with a plain dict lookup in the same run as the baseline.

Run: ``.venv/bin/python bench/decision_cost.py``.  Not a test.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lxc_notify_plugin.host.udev import HostDeviceIndex, device_record, udev_running  # noqa: E402
from lxc_notify_plugin.paths import PACKAGE_PROFILES  # noqa: E402
from lxc_notify_plugin.policy.mknod import DevicePolicy, UdevDevice  # noqa: E402
from lxc_notify_plugin.policy.profile import parse_profile  # noqa: E402


def main() -> int:
    host = HostDeviceIndex()
    if udev_running():
        import pyudev

        for device in pyudev.Context().list_devices():
            record = device_record(device)
            if record is not None:
                host.put(record)
    host.put(UdevDevice("b", 7, 300, "block", "/dev/loop300", frozenset({"lxc_notify"}),
                        {"LXC_NOTIFY_PROFILES": "loop docker"}))
    profile = parse_profile(
        'extends = ["default"]\n[[udev]]\nsubsystem = "block"\ntag = "lxc_notify"\n'
        'devnode = "/dev/loop*"\nproperties = { LXC_NOTIFY_PROFILES = "loop" }\n',
        "bench.toml", (PACKAGE_PROFILES,))
    policy = DevicePolicy.from_profile(profile)
    plain = {("c", 1, 3): True}
    cases = {
        "dict lookup (baseline)": lambda: plain.get(("c", 1, 3)),
        "static entry, allowed (c 1:3)": lambda: policy.allows("c", 1, 3, host),
        "no rule, refused (c 4:1)": lambda: policy.allows("c", 4, 1, host),
        "udev rule, allowed (b 7:300)": lambda: policy.allows("b", 7, 300, host),
        "udev rule, absent device (b 7:999)": lambda: policy.allows("b", 7, 999, host),
    }
    runs = 200_000
    base = min(timeit.repeat(cases["dict lookup (baseline)"], number=runs, repeat=5)) / runs
    print(f"device decisions, {len(host)} host devices indexed, best of 5 x {runs}")
    print(f"{'case':38} {'ns':>8} {'x dict':>8}")
    for name, case in cases.items():
        cost = min(timeit.repeat(case, number=runs, repeat=5)) / runs
        print(f"{name:38} {cost * 1e9:8.0f} {cost / base:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
