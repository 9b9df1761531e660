"""CoCu's three stages (expansion, ranking, clustering), their ablations, archives and sampling.

Public API: ``curate`` / ``curate_batches`` (production, batched), ``reference_curate`` (the literal
per-image oracle), ``write_archive`` / ``ArchiveReader`` (on-disk archive), ``ConceptSampler``.
"""

from cocu_core.curation.archive import (ARCHIVE_SCHEMA, ARCHIVE_VERSION, ArchiveEntry, ArchiveError, ArchiveReader,
                                        archive_metadata, write_archive)
from cocu_core.curation.curate import curate, curate_batches
from cocu_core.curation.errors import CurationInputError
from cocu_core.curation.reference import reference_curate
from cocu_core.curation.sampling import ConceptSampler
from cocu_core.curation.variants import VARIANTS, Variant, get_variant

__all__ = [
    "ARCHIVE_SCHEMA", "ARCHIVE_VERSION", "ArchiveEntry", "ArchiveError", "ArchiveReader", "archive_metadata",
    "write_archive", "curate", "curate_batches", "CurationInputError", "reference_curate", "ConceptSampler",
    "VARIANTS", "Variant", "get_variant",
]
