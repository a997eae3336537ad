"""The shipped alert rules, written with the runbook links an installation wants.

``alerts/calmon.rules.yml`` links each alert to ``docs/runbooks/<Alert>.md``, a path in this
repository (the only address calmon can vouch for). ``calmon alerts render --runbook-base URL``
writes the same rules with every ``runbook_url`` under the operator's base (a wiki, an internal
Git host), changing nothing else in the file.
"""

from __future__ import annotations

import re

__all__ = ["SHIPPED_BASE", "rebase_runbooks"]

SHIPPED_BASE = "docs/runbooks/"
_RUNBOOK = re.compile(r"^(\s*runbook_url:\s*)" + re.escape(SHIPPED_BASE) + r"(\S+\.md)[ \t]*$", re.MULTILINE)


def rebase_runbooks(rules: str, base: str) -> str:
    """``rules`` with every shipped runbook link moved under ``base`` (a trailing ``/`` is added)."""
    if not base.endswith("/"):
        base += "/"
    rebased, count = _RUNBOOK.subn(lambda m: f"{m.group(1)}{base}{m.group(2)}", rules)
    if count == 0:
        raise ValueError(f"no runbook_url under {SHIPPED_BASE!r} found: not the shipped rules file?")
    return rebased
