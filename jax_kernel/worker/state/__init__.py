"""The worker's variables, kept on disk so that the next worker can have them back.

After each successful cell the worker's idle loop hands the namespace to ``StateKeeper.cell_done``
and then calls ``step()`` in short slices while nothing else is asked of it; the keeper saves what
changed since its last commit into the kernel's private state directory.  When a worker dies,
the next one calls ``StateKeeper.restore`` before its first cell.

Formats are standard ones: arrays are ``.npy`` files (JAX arrays copied to host, with their
sharding as JSON), other values cloudpickle with the arrays inside them taken out of band, modules
their import name; a JSON manifest names every file by its BLAKE3 digest, and the kernel keeps the
manifest's own digest.  Modules: ``keeper`` (passes, budgets, stepping), ``saver`` (change
detection, what is already stored), ``writer`` (chunked hashing and writing), ``arrays`` and ``jaxarrays`` (the ``.npy`` store, placements),
``pickling`` (the pickler and its reducers), ``manifest`` (layout, commit, garbage collection),
``restore``.

JAX is never imported here unless the namespace already holds JAX values.
"""

from .keeper import StateKeeper
from .summary import Budgets, RestoreReport, Summary

__all__ = ["Budgets", "RestoreReport", "StateKeeper", "Summary"]
