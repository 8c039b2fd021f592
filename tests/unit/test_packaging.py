"""A regular (non-editable) install carries its profiles, udev rules and systemd units.

profiles/ and udev/ live at the top of the tree; setup.cfg maps them into the
package. Built from a copy of the tree, so the repository gets no build/ or
egg-info, and run from another directory, so nothing is found by accident.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "lxc_notify_plugin", "profiles",
                "udev")


def run(argv: list[str], cwd: Path, pythonpath: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n" \
                                   f"{result.stdout}\n{result.stderr}"
    return result


def test_an_installed_package_finds_its_profiles_and_udev_rules(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copyfile(ROOT / name, source / name)
    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-build-isolation", "--no-deps", "--no-compile", "--target", str(target),
         str(source)], cwd=tmp_path)
    installed = target / "lxc_notify_plugin"

    # Every module of the tree is in the install (setup.cfg lists subpackages by hand).
    modules = {p.relative_to(ROOT / "lxc_notify_plugin")
               for p in (ROOT / "lxc_notify_plugin").rglob("*.py")}
    missing = modules - {p.relative_to(installed) for p in installed.rglob("*.py")}
    assert not missing, f"not installed (add their packages to setup.cfg): {sorted(missing)}"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lxc_notify = [sys.executable, "-m", "lxc_notify_plugin",
                  "--profile-dir", str(elsewhere / "no-admin-profiles"),
                  "--udev-control", str(elsewhere / "no-udev")]
    compiled = run([*lxc_notify, "profile", "compile", "default"], elsewhere, target).stdout
    assert compiled.startswith("2\ndenylist\n"), compiled
    assert f"({installed / 'profiles' / 'default.toml'})" in compiled, compiled
    assert "mknodat notify" in compiled

    rules_dir = elsewhere / "rules.d"
    run([*lxc_notify, "udev", "install", "--rules-dir", str(rules_dir)], elsewhere, target)
    rules = ROOT / "udev" / "70-lxc-notify.rules"
    assert (rules_dir / rules.name).read_text() == rules.read_text()
    assert (installed / "udev" / rules.name).is_file()

    # The systemd units travel with the package (`service install` renders them).
    units = run([*lxc_notify, "service", "unit"], elsewhere, target).stdout
    assert "ExecStart=" in units and "ListenSequentialPacket=" in units, units


def test_shipped_data_is_found_where_each_install_puts_it(tmp_path: Path) -> None:
    from lxc_notify_plugin.paths import shipped

    data = tmp_path / "usr/share/lxc-notify"
    # Debian's package: the Python package in dist-packages, its data under /usr/share.
    dist = tmp_path / "dist-packages"
    (dist / "lxc_notify_plugin").mkdir(parents=True)
    (dist / "profiles").mkdir()  # another package's stray folder is not ours
    assert shipped("profiles", dist / "lxc_notify_plugin", data) == data / "profiles"
    # A wheel: inside the package.
    (dist / "lxc_notify_plugin/profiles").mkdir()
    assert shipped("profiles", dist / "lxc_notify_plugin", data) == \
        dist / "lxc_notify_plugin/profiles"
    # A source tree or an editable install: beside the package, with setup.cfg.
    tree = tmp_path / "src"
    (tree / "lxc_notify_plugin").mkdir(parents=True)
    (tree / "profiles").mkdir()
    (tree / "setup.cfg").write_text("")
    assert shipped("profiles", tree / "lxc_notify_plugin", data) == tree / "profiles"
