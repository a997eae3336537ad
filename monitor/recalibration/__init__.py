"""Recalibration: fit candidates on recent labelled rows, gate them, promote or refuse, and say why."""
