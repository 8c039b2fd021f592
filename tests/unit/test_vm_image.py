"""The VM tier's images stay in step with the project (no VM is booted here)."""

from __future__ import annotations

from tests.vm import image


def test_images_hold_everything_setup_sh_installs() -> None:
    # setup.sh in a guest without network must find every package installed.
    assert set(image.setup_sh_packages()) <= set(image.PACKAGES)


def test_images_hold_the_debian_packages_dependencies() -> None:
    # `apt install ./lxc-notify-plugin_*.deb` in a guest without network (test_package.py).
    for name in ("python3-pyudev", "python3-prometheus-client", "python3-lxc", "lxcfs"):
        assert name in image.PACKAGES


def test_wheels_cover_the_install_requirements() -> None:
    wanted = " ".join(image.requirements())
    for name in ("pyseccomp", "pyudev", "prometheus_client", "setuptools"):
        assert name in wanted, wanted


def test_cache_key_follows_the_package_list() -> None:
    suite = image.SUITES["bookworm"]
    key = image.cache_key(suite, "http://deb.debian.org/debian")
    assert key == image.cache_key(suite, "http://deb.debian.org/debian")
    assert key != image.cache_key(image.SUITES["trixie"], "http://deb.debian.org/debian")
    assert key != image.cache_key(suite, "http://mirror.example/debian")
