"""Which site each StackExchange dump file belongs to, and which files of a dump are read.

The Internet Archive publishes one ``SITE.7z`` per site (Posts.xml, PostLinks.xml and six tables this
pipeline does not read) and, for the largest site, one archive per table: ``stackoverflow.com-Posts.7z``,
``stackoverflow.com-PostLinks.7z``. Unpacked, a dump is a folder named after the site. The site names every
pair's provenance and the CC BY-SA attribution links (``https://SITE/q/ID``), so it must be known for certain:
from the archive name, from a folder named like a site, or from ``source.site``; anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sources.base import InputError, InputFile

POSTS, LINKS = "Posts.xml", "PostLinks.xml"
TABLE_FILES = {"Posts.xml": POSTS, "Posts.xml.gz": POSTS, "PostLinks.xml": LINKS, "PostLinks.xml.gz": LINKS}

# Every StackExchange network domain: SITE.stackexchange.com (and SITE.meta.stackexchange.com), the sites on
# their own domains and their metas (meta.superuser.com), language sites (ru.stackoverflow.com).
_SITE_NAME = re.compile(
    r"^(?:[a-z0-9][a-z0-9-]*\.)*"
    r"(?:stackexchange\.com|stackoverflow\.com|superuser\.com|serverfault\.com|askubuntu\.com"
    r"|mathoverflow\.net|stackapps\.com)$")
_TABLE_SUFFIX = re.compile(r"-(Posts|PostLinks|Badges|Comments|PostHistory|Tags|Users|Votes)$")


@dataclass(frozen=True)
class DumpFile:
    """One input the reader uses: a table file, or an archive and the tables it is expected to hold."""

    file: InputFile
    site: str
    tables: tuple[str, ...]  # POSTS and/or LINKS
    archive: bool


def is_site_name(name: str) -> bool:
    return bool(_SITE_NAME.match(name.lower()))


def site_in_name(part: str) -> str | None:
    """A folder or archive name -> the site it names, or None ("cardano.stackexchange.com.7z",
    "stackoverflow.com-Posts.7z", "superuser.com", but not "data" or "dump.7z")."""
    stem = re.sub(r"\.7z$", "", part, flags=re.IGNORECASE)
    stem = _TABLE_SUFFIX.sub("", stem)
    return stem.lower() if is_site_name(stem) else None


def archive_tables(name: str) -> tuple[str, ...]:
    """The tables an archive is read for: both for SITE.7z, one for SITE-Posts.7z / SITE-PostLinks.7z, none
    for the other per-table archives (SITE-Users.7z ...)."""
    stem = re.sub(r"\.7z$", "", name.rsplit("/", 1)[-1], flags=re.IGNORECASE)
    table = _TABLE_SUFFIX.search(stem)
    if table is None:
        return (POSTS, LINKS)
    return {"Posts": (POSTS,), "PostLinks": (LINKS,)}.get(table.group(1), ())


def _site_from_paths(item: InputFile, archive: bool) -> str | None:
    """The site named by the archive itself, or by the folder holding a table file (release name first,
    then the path on this machine)."""
    for path in (item.name, item.uri):
        parts = [part for part in path.replace("\\", "/").split("/") if part]
        candidates = parts[-1:] if archive else parts[-2:-1]
        for part in candidates:
            site = site_in_name(part)
            if site:
                return site
    return None


def plan_dump(inputs: list[InputFile], configured_site: str | None, read_links: bool) -> list[DumpFile]:
    """The inputs the reader uses, each with its site; raises InputError (one line) when a site is unknown,
    contradicts ``source.site``, or no Posts table is among the inputs. Other files are not read (nor hashed)."""
    if configured_site is not None and not is_site_name(configured_site):
        raise InputError(f"config key 'source.site': {configured_site!r} is not a StackExchange site name "
                         "(e.g. cardano.stackexchange.com, stackoverflow.com, superuser.com)")
    planned = []
    for item in inputs:
        base = item.name.rsplit("/", 1)[-1]
        archive = base.lower().endswith(".7z")
        tables = archive_tables(base) if archive else ((TABLE_FILES[base],) if base in TABLE_FILES else ())
        if not read_links:
            tables = tuple(table for table in tables if table != LINKS)
        if not tables:
            continue
        site = _site_from_paths(item, archive)
        if configured_site is not None:
            if site is not None and site != configured_site.lower():
                raise InputError(f"config key 'source.site' is {configured_site!r} but input {item.name} "
                                 f"is named after {site!r}: drop source.site or pass that site's dump alone")
            site = configured_site.lower()
        if site is None:
            where = item.name if archive else f"{item.name} (folder {_folder_of(item)!r})"
            raise InputError(f"cannot tell which StackExchange site {where} is from: name its folder or archive "
                             "after the site (cardano.stackexchange.com/Posts.xml, cardano.stackexchange.com.7z) "
                             "or set --set source.site=SITE")
        planned.append(DumpFile(file=item, site=site, tables=tables, archive=archive))
    seen: dict[str, str] = {}
    for dump in planned:
        other = seen.setdefault(dump.file.name, dump.file.uri)
        if other != dump.file.uri:
            # Provenance and the manifest name inputs by this name: two files under one name cannot be told apart.
            raise InputError(f"inputs {other} and {dump.file.uri} are both named {dump.file.name!r}: pass their "
                             "folders (--input dumps/SITE, or a glob of folders) so each keeps its site in its name")
    if not any(POSTS in dump.tables for dump in planned):
        raise InputError("no Posts.xml or site .7z archive among the inputs: pass a site dump folder, "
                         "its .7z, or a glob of them")
    return planned


def _folder_of(item: InputFile) -> str:
    parts = item.uri.replace("\\", "/").rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else ""


def missing_links_warnings(planned: list[DumpFile]) -> list[str]:
    """One line per site whose Posts are read but whose PostLinks table is absent from the inputs (archives
    are looked into when local; a remote archive is checked when it is read)."""
    sites_with_posts = sorted({dump.site for dump in planned if POSTS in dump.tables})
    warnings = []
    for site in sites_with_posts:
        dumps = [dump for dump in planned if dump.site == site]
        if any(LINKS in dump.tables and not dump.archive for dump in dumps):
            continue
        archives = [dump for dump in dumps if dump.archive and LINKS in dump.tables]
        if archives and any(_archive_has(dump.file.uri, LINKS) is not False for dump in archives):
            continue
        warnings.append(missing_links_line(site))
    return warnings


def missing_links_line(site: str) -> str:
    return (f"{site}: no PostLinks.xml among the inputs, so no stackexchange_duplicates pairs "
            "(pass the whole dump folder or SITE.7z to get them)")


def _archive_has(uri: str, table: str) -> bool | None:
    """Whether a local archive lists a member named ``table``; None when it cannot be told before reading."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    try:
        import py7zr

        with py7zr.SevenZipFile(uri, mode="r") as archive:
            return any(name.replace("\\", "/").rsplit("/", 1)[-1] == table for name in archive.getnames())
    except Exception:  # an unreadable archive is reported when it is read
        return None
