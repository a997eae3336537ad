"""Real service binaries the tests need: skip (developer machine) or fail (CI) when one is missing."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["REQUIRE_SERVICES", "missing_service", "promtool", "require_binary"]

REQUIRE_SERVICES = os.environ.get("CALMON_REQUIRE_SERVICES") == "1"


def missing_service(message: str) -> None:
    """Skip (developer machine) or fail (CI: CALMON_REQUIRE_SERVICES=1) when a real service is absent."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {message}")
    pytest.skip(message)


def require_binary(name: str, package: str) -> str:
    """The path of a real tool the test needs, or skip/fail naming the Debian package that brings it."""
    found = shutil.which(name)
    if found is None:
        missing_service(f"{name} not found; install Debian's {package!r} package (apt-get install {package})")
    assert found is not None
    return found


def promtool() -> str:
    return require_binary("promtool", "prometheus")
