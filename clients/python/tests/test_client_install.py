"""The client installs light: into a fresh virtualenv it brings httpx and nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[1]
HEAVY = {"numpy", "scikit-learn", "scipy", "sqlalchemy", "pandas", "pydantic", "calmon"}


@pytest.mark.slow
def test_a_fresh_venv_gets_httpx_and_nothing_heavy(tmp_path: Path) -> None:
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", str(CLIENT)], check=True, capture_output=True, timeout=600
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "calmon-client" in installed and "httpx" in installed
    assert not installed & HEAVY, f"the client pulled in {installed & HEAVY}"
    # and importing every module, adapters included, loads none of them either
    probe = (
        "import sys, calmon_client, calmon_client.adapters;"
        "heavy = ('numpy', 'sklearn', 'scipy', 'sqlalchemy', 'pandas', 'pydantic');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "[]"
    assert sys.prefix != str(tmp_path / "venv")
