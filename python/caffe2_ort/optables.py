"""``python -m caffe2_ort.optables --markdown | --write README.md``: print the README's op reference
tables generated from the op table (:mod:`caffe2_ort.opdefs`), or rewrite them in a README."""

from __future__ import annotations

import sys

from .opdefs import markdown, rewrite_readme


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m caffe2_ort.optables", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print the README's op tables")
    g.add_argument("--write", metavar="README.md", help="rewrite the op tables in this file")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown())
        return 0
    with open(args.write, encoding="utf-8") as f:
        old = f.read()
    new = rewrite_readme(old)
    if new != old:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"{args.write}: {'rewritten' if new != old else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
