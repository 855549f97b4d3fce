"""Regenerates the README's table of paired comparisons: runs (or reuses) every comparison of
comparisons.py over the training seeds, then rewrites the block between the README's
`<!-- comparisons:start -->` and `<!-- comparisons:end -->` markers with the table (intervals included)
and writes it to OUT/comparisons.md as well. Resumable: stop it at any point and start it again.

    .venv/bin/python benchmarks/readme_results.py [--seeds 0,1,2] [--out DIR] [--readme README.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from comparisons import COMPARISONS, markdown_table, parse_args, run

START, END = "<!-- comparisons:start -->", "<!-- comparisons:end -->"


def replace_block(text: str, table: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"the README has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> None:
    argv = sys.argv[1:]
    readme = Path("README.md")
    if "--readme" in argv:
        i = argv.index("--readme")
        readme = Path(argv[i + 1])
        del argv[i : i + 2]
    args = parse_args(argv)
    results = run(list(COMPARISONS), args)
    table = markdown_table(results)
    (args.out / "comparisons.md").write_text(table + "\n")
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(replace_block(readme.read_text(), table))
    tmp.replace(readme)
    print(table)
    print(f"readme_rows: {len(results)}")


if __name__ == "__main__":
    main()
