"""The contract between the kernel and its workers, imported by both sides.

Framing and the sealed wire, both directions' message schemas, the typed worker config and
sandbox policy, entry-point validation, the output budget, the safe import path and exit
statuses.  Standard library (and ``cryptography``) only, and nothing else of this project: the
worker imports this package before its sandbox is on.
"""
