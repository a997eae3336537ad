"""Pure calibration math: no I/O, no clock, nothing of the project imported."""
