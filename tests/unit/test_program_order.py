"""What a program started for a container takes from its caller, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxc_notify_plugin.handlers.program import apparmor_label


@pytest.mark.parametrize(("text", "label"), [
    ("lxc-container-default-cgns (enforce)\n", "lxc-container-default-cgns"),
    ("lxc-box_</var/lib/lxc>//&:lxc-box_<-var-lib-lxc>:unconfined (enforce)",
     "lxc-box_</var/lib/lxc>//&:lxc-box_<-var-lib-lxc>:unconfined"),
    ("unconfined\n", ""),
    ("", ""),
])
def test_the_callers_apparmor_profile(tmp_path: Path, text: str, label: str) -> None:
    (tmp_path / "attr" / "apparmor").mkdir(parents=True)
    (tmp_path / "attr" / "apparmor" / "current").write_text(text)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert apparmor_label(fd) == label
    finally:
        os.close(fd)


def test_no_lsm_means_no_label(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert apparmor_label(fd) == ""
    finally:
        os.close(fd)
