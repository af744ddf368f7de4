"""Data sources: one `DataSource` per dataset (`procedural`, `nyud`, `pascal`), and `ImageFolder`
for pictures without labels (``mtcp predict`` on a user's own images)."""

from mtcp.data.sources.base import DataSource
from mtcp.data.sources.image_folder import ImageFolder

__all__ = ["DataSource", "ImageFolder"]
