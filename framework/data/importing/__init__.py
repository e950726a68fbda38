"""``jevons data import KIND INPUT... out=DIR``: users' files to a family's indexed shards.

A family answers kinds through :meth:`~jevons.framework.family.Family.importers`; the
contract is :mod:`~jevons.framework.data.importing.contract`, the shared machinery
(streaming, workers, resumption, ranks, the report, the index) is
:mod:`~jevons.framework.data.importing.engine`. Accepted inputs per kind: docs/data.md.
"""

from jevons.framework.data.importing.contract import REASONS, Converted, Importer, ImportOptions, Record, Skipped

__all__ = ["REASONS", "Converted", "ImportOptions", "Importer", "Record", "Skipped"]
