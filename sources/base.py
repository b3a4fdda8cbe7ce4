"""What every source provides, and the input handling they share.

A source module exposes ``SOURCE``, a :class:`Source` with:

- ``config_model``: the pydantic model of its ``source:`` config section (``extra="forbid"``);
- ``read(inputs, source_config, context)``: a ``beam.PTransform`` applied to the pipeline root that returns
  ``{"pairs": PCollection[pair dict], "rejects": PCollection[reject dict]}`` (see ``pipelines.core.records``);
- ``default_inputs(source_config, download_config)``: the input URIs to use when ``--input`` is absent
  (downloading the public file into the cache where it has a stable address), or raise ``InputError``.

Input rows that cannot become pairs leave as rejects with stage ``read`` and a reason, never silently.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from pipelines.core.errors import UsageError
from pipelines.core.records import RejectPolicy


class InputError(UsageError):
    """An unreadable or missing input, an unknown format: one line naming the path."""


class SourceSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class InputFile:
    """One input file: its full URI (for reading) and the release-stable name recorded in provenance.

    The name is the path relative to the folder that holds what the user named, so the same dump gives
    the same shards whether it sits in /data or in ~/dumps.
    """

    uri: str
    name: str
    size: int


@dataclass
class RunContext:
    """What a source or stage may need to know about the run besides its own config."""

    source_name: str
    policy: RejectPolicy
    # How many bytes one archive member given as input may unpack to (download.max_extracted_bytes).
    max_extracted_bytes: int = 64 << 30
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    name: str
    config_model: type[BaseModel]
    read: Callable[..., Any]
    default_inputs: Callable[..., list[str]]
    description: str = ""
    # For the dataset card: a Hugging Face licence id ("cc-by-sa-4.0", "other") and the attribution text
    # that the content's licence requires.
    license_id: str = "other"
    attribution: str = ""
    # (inputs, source_config) -> the inputs this source reads; only these are hashed into the manifest.
    # None: every input is read.
    select_inputs: Callable[..., list[Any]] | None = None


def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def expand_inputs(uris: list[str]) -> list[InputFile]:
    """Files, globs and directories (local, s3://, gs://) -> the sorted list of input files.

    Raises InputError naming the first argument that matches nothing.
    """
    fs = _filesystems()
    files: dict[str, InputFile] = {}
    for raw in uris:
        uri = raw[len("file://"):] if raw.startswith("file://") else raw
        if not _is_remote(uri):
            uri = os.path.expanduser(uri)
            folders = _matching_folders(uri)
            if folders:
                # A glob of dump folders ('dumps/*.stackexchange.com'): each folder is read as if named alone.
                for folder in folders:
                    check_inside_root(folder, glob_root(uri), raw, folder_link=True)
                    files.update((item.uri, item) for item in expand_inputs([folder]))
                continue
            if os.path.isdir(uri):
                root = os.path.abspath(uri)
                base = os.path.dirname(root.rstrip(os.sep))
                found = False
                for folder, dirs, names in os.walk(root):
                    dirs.sort()
                    for name in dirs:
                        # os.walk does not descend into linked folders: one that leads outside is named.
                        check_inside_root(os.path.join(folder, name), root, raw, folder_link=True)
                    for name in sorted(names):
                        if name.startswith("."):
                            continue
                        path = os.path.join(folder, name)
                        check_inside_root(path, root, raw)
                        files[path] = InputFile(path, os.path.relpath(path, base).replace(os.sep, "/"),
                                                os.path.getsize(path))
                        found = True
                if not found:
                    raise InputError(f"input folder is empty: {raw}")
                continue
            if not any(ch in uri for ch in "*?[") and not os.path.exists(uri):
                raise InputError(f"input not found: {raw}")
            if not any(ch in uri for ch in "*?[") and not os.access(uri, os.R_OK):
                raise InputError(f"input not readable: {raw}")
        pattern = uri.rstrip("/") + "/**" if _is_remote(uri) and uri.endswith("/") else uri
        try:
            result = fs.match([pattern])[0]
        except Exception as exc:  # Beam wraps every filesystem failure in its own types
            raise InputError(f"cannot list input {raw}: {str(exc).splitlines()[0][:200]}") from None
        if not result.metadata_list:
            raise InputError(f"input not found: {raw}")
        for metadata in sorted(result.metadata_list, key=lambda m: m.path):
            path = metadata.path
            if not _is_remote(path):
                path = os.path.abspath(path)
                if path != os.path.abspath(uri):  # a glob match: it must stay under the glob's fixed folders
                    check_inside_root(path, glob_root(uri), raw)
                elif not _is_regular(path):
                    raise InputError(f"input is not a regular file: {raw}")
            files[path] = InputFile(path, os.path.basename(path), metadata.size_in_bytes)
    return [files[key] for key in sorted(files)]


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def glob_root(pattern: str) -> str:
    """The folders of a local glob before its first wildcard: everything it matches lies under them."""
    fixed = []
    for part in pattern.split(os.sep):
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return os.path.abspath(os.sep.join(fixed) or os.sep)


def check_inside_root(path: str, root: str, raw: str, *, folder_link: bool = False) -> None:
    """Inputs stay inside their tree: a symbolic link found in an input folder (or glob) is followed only when
    it resolves inside that folder, and only regular files are read (no devices, pipes or sockets)."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(path)  # a link on the file, or on a folder between it and the root
    if target != real_root and not target.startswith(real_root.rstrip(os.sep) + os.sep):
        raise InputError(f"input {path} is a symbolic link to outside {raw}: refused (inputs are read only "
                         "inside the folder or glob given)")
    if not folder_link and not _is_regular(path):
        raise InputError(f"input {path} is not a regular file (or a link to one): refused")


def _matching_folders(pattern: str) -> list[str]:
    """The folders a local glob matches, when it matches only folders (a glob of files is left to Beam)."""
    if not any(ch in pattern for ch in "*?["):
        return []
    import glob

    matches = sorted(glob.glob(pattern))
    return matches if matches and all(os.path.isdir(match) for match in matches) else []


def sha256_uri(uri: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with _filesystems().open(uri, compression_type="uncompressed") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_inputs(files: list[InputFile]) -> list[dict[str, Any]]:
    """Every input with its size and sha256, for the manifest (reads each input once)."""
    described = []
    for item in files:
        try:
            checksum = sha256_uri(item.uri)
        except OSError as exc:
            raise InputError(f"input not readable: {item.uri}: {exc.strerror or exc}") from None
        described.append({"name": item.name, "uri": item.uri, "bytes": item.size, "sha256": checksum})
    return described


def decode_text(raw: bytes) -> tuple[str | None, str | None]:
    """Bytes of one input row -> (text, None), or (None, reason) when it is not valid UTF-8.

    A UTF-8 byte-order mark at the start is dropped; a trailing CR (CRLF files) is removed.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
