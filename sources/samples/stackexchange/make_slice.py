"""How the bundled sample was cut (kept for auditors; the project never runs it).

    python sources/samples/stackexchange/make_slice.py SITE_DUMP_FOLDER OUT_FOLDER 100

Keeps, from a site dump's Posts.xml and PostLinks.xml: the first K questions by Id, both questions of every
duplicate link (LinkTypeId 3) whose two posts are in the dump, the first two tag-wiki posts (types 4 and 5:
real dumps hold them, the reader rejects them as post_type_skipped), every answer of a kept question, and the
PostLinks rows whose two posts are both kept. Row lines are copied byte for byte; the XML declaration, the
byte-order mark, the root element and the CRLF line endings are kept as in the dump.
"""

import os
import re
import sys
from collections import Counter


def attribute(line: bytes, key: str) -> str | None:
    match = re.search(rb" " + key.encode() + rb'="([^"]*)"', line)
    return match.group(1).decode() if match else None


def main(source: str, target: str, first_questions: int) -> None:
    posts_lines = open(os.path.join(source, "Posts.xml"), "rb").read().split(b"\n")
    link_lines = open(os.path.join(source, "PostLinks.xml"), "rb").read().split(b"\n")
    posts = {int(attribute(line, "Id")): line for line in posts_lines if b"<row" in line}
    questions = sorted(i for i, line in posts.items() if attribute(line, "PostTypeId") == "1")
    keep = set(questions[:first_questions])
    for line in link_lines:
        if b"<row" in line and attribute(line, "LinkTypeId") == "3":
            closed, target_id = int(attribute(line, "PostId")), int(attribute(line, "RelatedPostId"))
            if closed in posts and target_id in posts:
                keep |= {closed, target_id}
    keep |= set(sorted(i for i, line in posts.items() if attribute(line, "PostTypeId") in ("4", "5"))[:2])
    keep |= {i for i, line in posts.items()
             if attribute(line, "PostTypeId") == "2" and int(attribute(line, "ParentId")) in keep}
    os.makedirs(target, exist_ok=True)

    def write(name, lines, wanted):
        data = b"\n".join(line for line in lines if b"<row" not in line or wanted(line))
        with open(os.path.join(target, name), "wb") as handle:
            handle.write(data)
        return data

    posts_data = write("Posts.xml", posts_lines, lambda line: int(attribute(line, "Id")) in keep)
    links_data = write("PostLinks.xml", link_lines, lambda line: int(attribute(line, "PostId")) in keep
                       and int(attribute(line, "RelatedPostId")) in keep)
    kinds = Counter(attribute(posts[i], "PostTypeId") for i in keep)
    print(f"{len(keep)} posts {dict(sorted(kinds.items()))}, {len(posts_data):,} bytes; "
          f"{links_data.count(b'<row')} links, {len(links_data):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
