"""Kernel process: the host facilities the supervisor uses (network namespaces, port forwarding)."""
