"""Cost of the XML markup pre-scan (sources/xml_lines.scan_range) that gives each byte range of a split
Posts.xml its starting comment/CDATA/PI state, measured side by side with a plain read of the same file and with
parsing its rows. Prints ratios; absolute times depend on the machine.

    python benchmarks/xml_prescan.py [ROWS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sources.readers import iter_lines  # noqa: E402
from sources.stackexchange import parse_row  # noqa: E402
from sources.xml_lines import scan_range  # noqa: E402

ROW = ('  <row Id="{}" PostTypeId="1" Score="2" Title="Question about stake pools, number {}" '
       'Body="&lt;p&gt;' + "Body text with some words in it. " * 20 + '&lt;/p&gt;" />\n')


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "Posts.xml")
        with open(path, "w") as handle:
            handle.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
            for index in range(rows):
                handle.write(ROW.format(index, index))
            handle.write("</posts>\n")
        size = os.path.getsize(path)
        split = 8 << 20
        ranges = [(start, min(start + split, size)) for start in range(0, size, split)]
        prescan = best_of(3, lambda: [scan_range(path, start, end, 4 << 20) for start, end in ranges])
        read = best_of(3, lambda: sum(1 for _ in iter_lines(path)))
        parse = best_of(1, lambda: [parse_row(raw.data.decode(), 4 << 20) for raw in iter_lines(path)])
    print(f"{size / 1e6:.0f} MB, {rows} rows, {len(ranges)} ranges of {split >> 20} MiB")
    print(f"pre-scan / plain line read: {prescan / read:.2f}")
    print(f"pre-scan / line read + parse_row: {prescan / (read + parse):.3f}")


if __name__ == "__main__":
    main()
