"""Exit statuses a worker ends with on purpose, so that the kernel can say why it ended."""

from __future__ import annotations

#: The worker could not apply the strict profile on this host and refused to run (sysexits' EX_CONFIG).
EXIT_STRICT = 78
