"""Kernel feature probes: each answers for this kernel, with no effect."""

from __future__ import annotations

import subprocess
import sys

from lxc_notify_plugin.kernel import features


def test_every_probe_answers_yes_or_no_here() -> None:
    for feature in features.FEATURES:
        answer = features.have(feature.name)
        if feature.probe is None:
            assert answer in (None, True, False)
        else:
            assert answer in (True, False), feature.name


def test_this_kernel_has_what_the_daemon_requires() -> None:
    assert features.missing_required() == []


def test_an_observed_feature_is_reported_as_seen() -> None:
    before = features.have("seccomp-sync-wake-up")
    try:
        features.observe("seccomp-sync-wake-up", False)
        row = next(r for r in features.report() if r["name"] == "seccomp-sync-wake-up")
        assert row["present"] is False
    finally:
        with features._lock:
            features._known.pop("seccomp-sync-wake-up", None)
            if before is not None:
                features._known["seccomp-sync-wake-up"] = before


def test_the_wait_killable_probe_loads_no_filter() -> None:
    # The probe runs in a child, whose seccomp mode must still be 0 afterwards.
    code = ("from lxc_notify_plugin.kernel import features\n"
            "features.have('seccomp-wait-killable-recv')\n"
            "print([l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.split() == ["Seccomp:", "0"]


def test_the_features_command_lists_every_feature() -> None:
    out = subprocess.run([sys.executable, "-m", "lxc_notify_plugin", "features"], check=True,
                         capture_output=True, text=True).stdout
    for feature in features.FEATURES:
        assert feature.name in out
