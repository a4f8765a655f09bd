"""Copy benchmark tables into README.md, untouched, between marker comments.

The README's Results section quotes figures; they must be exactly what the
commands produced.  Each block between

    <!-- results:DIR -->  ...  <!-- /results:DIR -->

is replaced by the tables of ``bench/results/DIR/report.md`` (every section
from the first per-tenant table up to the notes, headings demoted), and each
block between ``<!-- floor:FILE -->`` and ``<!-- /floor:FILE -->`` by the
markdown file ``bench/results/FILE`` that ``bench/floor.py --out`` wrote.
Nothing else in the README changes.

Usage: python bench/readme_results.py [--check]   (--check: exit 1 if stale)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BLOCK = re.compile(r"(<!-- (results|floor):([\w.\-/]+) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)


def report_tables(name: str) -> str:
    text = (RESULTS / name / "report.md").read_text()
    start = text.index("\n## Quiet tenant")
    end = text.find("\n## Notes on the intervals")
    body = text[start:end if end >= 0 else len(text)].strip("\n")
    return re.sub(r"^## ", "#### ", body, flags=re.M) + "\n"


def render(readme: str) -> str:
    def sub(m: re.Match[str]) -> str:
        kind, name = m.group(2), m.group(3)
        body = report_tables(name) if kind == "results" else (RESULTS / name).read_text()
        return f"{m.group(1)}{body}{m.group(5)}"

    return BLOCK.sub(sub, readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if a.check:
        if new != old:
            print("README.md Results differ from bench/results; run bench/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
