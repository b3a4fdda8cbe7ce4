"""Opens the store a release URI names: the one place that knows every kind of store (local folder, S3).

Kept apart from ``store`` (the interface and the local folder) so that ``s3_store`` builds on ``store`` without
``store`` importing it back.
"""

from __future__ import annotations

from pipelines.release.store import LocalStore, ReleaseStore, StoreError


def open_store(uri: str) -> ReleaseStore:
    """A store for a release URI: ``s3://bucket/prefix`` or a local path."""
    if uri.startswith("s3://"):
        from pipelines.release.s3_store import S3Store  # boto3 only where it is needed

        return S3Store.from_uri(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"unsupported release destination {uri!r}: use a local folder or s3://bucket/prefix")
    return LocalStore(uri[len("file://"):] if uri.startswith("file://") else uri)
