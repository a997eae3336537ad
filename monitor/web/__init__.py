"""The status page: what calmon sees, for a person, without Grafana (routes, views, templates)."""
