"""Kernel process: what a worker may do (the sandbox's settings) and which devices it gets."""
