"""Where video files live: an interface and its local-filesystem implementation."""

from sora2.api.storage.local import LocalStorage, Storage

__all__ = ["LocalStorage", "Storage"]
