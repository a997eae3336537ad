"""`calmon demo` end to end, shortened with --speed: a real daemon, traffic through the client
package, and the story's milestones read back from the daemon's API."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_demo_shows_the_alarm_the_promotion_and_the_recovery() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "demo",
            "--speed",
            "8",
            "--exit",
            "--seed",
            "0",
            "--duration",
            "900",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    assert "phase 1: healthy traffic" in out and "phase 2: qa-bot/returns turns overconfident" in out
    alarm = re.search(
        r"==> drift alarm on qa-bot/returns \(calibration\): evidence ([\d,]+) .* alarm level 100,000", out
    )
    assert alarm and int(alarm.group(1).replace(",", "")) >= 100_000
    assert re.search(r"==> recalibrated qa-bot/\S+: promoted a \w+ calibrator, version \d+", out)
    assert re.search(r"look: http://127\.0\.0\.1:\d+/reports/\d+", out)
    back = re.search(
        r"calibrated ECE of qa-bot/returns over the last \w+ is back to (0\.\d+), while the raw "
        r"confidences still miss by (0\.\d+)",
        out,
    )
    assert back and float(back.group(1)) < 0.05 <= float(back.group(2))
    assert 'calmon_expected_calibration_error{model="qa-bot",score="calibrated",segment="returns"' in out
    assert re.search(r"calmon says 0\.\d+ \(calibrator \w+\) -> (accept|send to human review)", out)
    assert out.index("drift alarm") < out.index("promoted a") < out.index("is back to")
    # the fix is the drifting segment's own: the healthy segments keep what they were served
    serving = re.search(r"serving calibrators: (.*); every other series", out)
    assert serving and serving.group(1).startswith("qa-bot/returns ") and "," not in serving.group(1)
