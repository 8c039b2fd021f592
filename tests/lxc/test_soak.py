"""The soak benchmark, short: 2 containers x 2 processes x 5 s, asserted.

It runs bench/soak.py itself, as a script, and reads the figures it writes
with ``--json``: the suite checks exactly the code the benchmark runs, and
never imports from bench/ (a directory of scripts, not a package, whose
modules find each other through sys.path).  The script brings its own
private daemon, containers and host tmpfs, and removes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent.parent / "bench" / "soak.py"
RSS_GROWTH_KIB = 20 * 1024


@pytest.mark.usefixtures("lxc_ready")
def test_short_soak_gives_only_right_answers_and_leaks_nothing(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, str(SOAK), "--containers", "2", "--procs", "2",
                           "--seconds", "5", "--warmup", "2", "--json", str(figures)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, output
    r = json.loads(figures.read_text())
    run = r["run"]
    assert run["failures"] == [], output
    assert run["reported"] == run["expected"] == 4, output
    assert run["wrong"] == 0 and run["enosys"] == 0, output
    assert run["ok"] > 0 and run["denied"] > 0, output
    assert r["daemon_alive"] and not r["traceback_in_log"], output
    assert r["fds"]["after"] == r["fds"]["before"], output
    assert r["rss_kib"]["max"] - r["rss_kib"]["before"] < RSS_GROWTH_KIB, output
    assert r["baseline"]["wrong"] == 0 and r["baseline"]["reported"] == 2, output
