"""Data sources: one `DataSource` per dataset (`procedural`, `nyud`, `pascal`)."""

from mtcp.data.sources.base import DataSource

__all__ = ["DataSource"]
