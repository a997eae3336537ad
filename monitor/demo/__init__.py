"""``calmon demo``: a daemon, realistic traffic through the client package, a drift, and what calmon
does about it, narrated on the terminal. Talks to the daemon over HTTP only, like any app."""
