"""The funcmesh command line: Kubeless-style commands that talk to the daemon over its API."""
