"""Where videos, thumbnails and reference images live: a folder or an S3 bucket (`STORAGE_URL`)."""

from sora2.api.storage.objects import (
    Storage,
    StorageUnavailable,
    StoredObject,
    check_key,
    copy_object,
)

__all__ = ["Storage", "StorageUnavailable", "StoredObject", "check_key", "copy_object"]
