#!/usr/bin/env python3
"""Checks that Rust files and functions stay small enough to read.

Usage: size_limits.py [--max-file N] [--max-fn N] DIR...

A file may have at most --max-file lines (default 600), a function at most --max-fn lines
(default 100) from its `fn` line to its closing brace. Tests (`#[cfg(test)] mod tests`
bodies and files under `tests/`) count for files but not for functions, since a table of
cases is easier to read whole. Exits 1 and lists every offender.
"""
import argparse
import pathlib
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)")


def strip(line):
    """The line without string/char literals and comments, for brace counting."""
    line = re.sub(r'r#*"[^"]*"#*', '""', line)
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def long_functions(path, lines, max_fn):
    out = []
    in_tests_from = None
    for i, line in enumerate(lines):
        if re.match(r"^\s*mod tests\b", line) and i > 0 and "cfg(test)" in lines[i - 1]:
            in_tests_from = i
            break
    end = in_tests_from if in_tests_from is not None else len(lines)
    i = 0
    while i < end:
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            s = strip(lines[j])
            if not opened and ";" in s and "{" not in s:
                break  # a declaration without a body
            depth += s.count("{") - s.count("}")
            opened = opened or "{" in s
            if opened and depth <= 0:
                break
            j += 1
        length = j - i + 1
        if opened and length > max_fn:
            out.append(f"{path}:{i + 1}: fn {m.group(7)} is {length} lines (limit {max_fn})")
        i += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-file", type=int, default=600)
    ap.add_argument("--max-fn", type=int, default=100)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    problems = []
    for d in args.dirs:
        for path in sorted(pathlib.Path(d).rglob("*.rs")):
            if "target" in path.parts:
                continue
            lines = path.read_text().splitlines()
            if len(lines) > args.max_file:
                problems.append(f"{path}: {len(lines)} lines (limit {args.max_file})")
            if "tests" not in path.parts:
                problems += long_functions(path, lines, args.max_fn)
    for p in problems:
        print(p)
    if problems:
        print(f"size_limits: {len(problems)} over the limits; split them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
