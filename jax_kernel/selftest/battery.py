"""One run of the self-test: the decoys, the kernel under test, and the attacks run in turn."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .attacks import Attack, Attacks
from .decoys import SECRET_VAR, Decoys
from .kernel import KernelUnderTest
from .verdicts import ESCAPED, Row


class Battery:
    """Decoys outside the sandbox, one kernel, and the attacks run against it."""

    def __init__(self, profile: str | None, kernel_name: str, out: Callable[[str], None] = print) -> None:
        self.profile = profile
        self.kernel_name = kernel_name
        self.out = out
        self.decoys = Decoys()
        self.kernel = KernelUnderTest(kernel_name, profile, os.path.join(self.decoys.root, "kernel.log"))
        self._attacks = Attacks(self.kernel, self.decoys)

    @property
    def report(self) -> dict[str, Any]:
        """What the kernel's worker says it applied (kernel_info's ``sandbox``)."""
        return self.kernel.report

    def start(self) -> None:
        """Start the kernel in the notebook folder, the decoy secret in its environment."""
        self.kernel.start(cwd=self.decoys.notebooks, env={SECRET_VAR: self.decoys.secret})

    def attacks(self) -> list[tuple[str, Attack]]:
        """Every attack with its name, in the order :meth:`run_all` runs them."""
        return self._attacks.listing()

    def kernel_log(self) -> str:
        """The kernel's own output, for a kernel that did not start."""
        return self.kernel.kernel_log()

    def run_all(self) -> list[Row]:
        """Run every attack, saying each verdict as it comes; the rows of the table."""
        rows = []
        for name, attack in self.attacks():
            try:
                verdict, evidence = attack()
            except Exception as e:  # noqa: BLE001 - the battery itself failed: not a pass
                verdict, evidence = ESCAPED, f"could not be judged: {type(e).__name__}: {e}"
            if verdict != ESCAPED and not self.kernel.is_alive():
                verdict, evidence = ESCAPED, "the kernel died"
            rows.append((name, verdict, " ".join(evidence.split())[:110]))
            self.out(f"  {verdict:<18} {name}")
        return rows

    def close(self) -> None:
        """The kernel first (its log is among the decoys' files), then the decoys."""
        self.kernel.close()
        self.decoys.close()
