"""Rolling calibration windows computed from sketch buckets, and the snapshot every reader shares."""
