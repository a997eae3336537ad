"""HTTP API: ingest of predictions and delayed feedback, read endpoints, health."""
