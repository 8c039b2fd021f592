"""debian/ stays in step with the tree: version, vendored pyseccomp, dependencies, daemon.toml.

The package itself is built and installed by the VM tier (tests/vm/test_package.py).
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import re
import sys
from dataclasses import replace
from pathlib import Path

import lxc_notify_plugin
from lxc_notify_plugin.service import config as daemon_config
from tests.vm.package import relations

REPO = Path(__file__).resolve().parent.parent.parent
DEBIAN = REPO / "debian"
VENDORED = DEBIAN / "vendor" / "pyseccomp"
# What each third-party import of the package is in Debian; None: shipped in the package.
DEBIAN_NAMES = {"lxc": "python3-lxc", "pyudev": "python3-pyudev",
                "prometheus_client": "python3-prometheus-client", "pyseccomp": None}


def test_the_changelog_carries_the_package_version() -> None:
    top = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert top.startswith(f"lxc-notify-plugin ({lxc_notify_plugin.__version__}) "), top


def test_vendored_pyseccomp_is_the_pinned_release_unchanged() -> None:
    source = (VENDORED / "pyseccomp.py").read_bytes()
    readme = (DEBIAN / "vendor" / "README").read_text()
    assert hashlib.sha256(source).hexdigest() in readme
    version = re.search(rb'^__version__ = "(.*)"$', source, re.MULTILINE)
    assert version is not None
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert f"pyseccomp=={version.group(1).decode()}" in cfg["options"]["install_requires"]
    assert "cptpcrd" in (DEBIAN / "copyright").read_text()
    assert (VENDORED / "LICENSE").read_text().startswith("MIT License")


def test_every_third_party_import_is_a_dependency_or_shipped() -> None:
    imported = set()
    for module in (REPO / "lxc_notify_plugin").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"lxc_notify_plugin", "tomli"}
    assert third_party == set(DEBIAN_NAMES), "map the new import to its Debian package"
    wanted = {name for name in DEBIAN_NAMES.values() if name}
    assert wanted <= set(relations("Depends")), wanted - set(relations("Depends"))
    installed = (DEBIAN / "lxc-notify-plugin.install").read_text()
    assert "debian/vendor/pyseccomp/pyseccomp.py usr/share/lxc-notify-plugin/" in installed
    assert installed.count("usr/share/lxc-notify-plugin/") == 1  # what __init__ appends
    assert lxc_notify_plugin.PRIVATE_MODULES == "/usr/share/lxc-notify-plugin"


def test_the_shipped_daemon_toml_shows_the_defaults() -> None:
    text = (REPO / "docs" / "daemon.toml").read_text()
    assert daemon_config.parse(text, "daemon.toml") == daemon_config.DaemonConfig(
        file="daemon.toml")
    # Uncommented, every key it shows is the default; three defaults are not values
    # (None: LXC's own path, beside the socket, where node_exporter is installed).
    uncommented = re.sub(r"^#(\[|[a-z_]+ = )", r"\1", text, flags=re.MULTILINE)
    shown = daemon_config.parse(uncommented, "daemon.toml")
    defaults = daemon_config.DaemonConfig(file="daemon.toml")
    assert shown.paths.lxc_path == "/var/lib/lxc"
    assert shown.paths.agent_socket == defaults.paths.agent_socket
    assert shown.metrics.path == daemon_config.NODE_EXPORTER_TEXTFILES / "lxc-notify.prom"
    assert replace(shown, paths=replace(shown.paths, lxc_path=None, oci_agent=None),
                   metrics=replace(shown.metrics, path=defaults.metrics.path)) == defaults
    keys = {key for section in daemon_config._SCHEMA.values() for key in section}
    assert keys <= set(re.findall(r"^#([a-z_]+) = ", text, re.MULTILINE)), "a key is missing"
