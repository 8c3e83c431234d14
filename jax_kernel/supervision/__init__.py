"""Kernel process: starting, watching, replacing and talking to workers (one, or a set)."""
