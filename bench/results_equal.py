"""Are two study folders' tables equal, value for value? For changes that must not move a number (a
refactor): run the same study before and after, then

    python bench/results_equal.py STUDY_A STUDY_B

Every file in results/ of both: CSV and parquet through pandas `DataFrame.equals` (exact, NaNs in the same
places), JSON by value, anything else byte for byte. Exits 1 when any differs or is missing on one side.
"""

import json
import sys
from pathlib import Path

import pandas as pd


def same(a: Path, b: Path) -> tuple[bool, str]:
    if a.suffix in (".csv", ".parquet"):
        read = pd.read_csv if a.suffix == ".csv" else pd.read_parquet
        x, y = read(a), read(b)
        return x.shape == y.shape and list(x.columns) == list(y.columns) and x.equals(y), f"{len(x)} rows"
    if a.suffix == ".json":
        return json.loads(a.read_text()) == json.loads(b.read_text()), "json"
    return a.read_bytes() == b.read_bytes(), "bytes"


def main(first: str, second: str) -> int:
    a, b = Path(first) / "results", Path(second) / "results"
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    differ = 0
    for name in names:
        if not ((a / name).exists() and (b / name).exists()):
            print(f"{name}: only in {first if (a / name).exists() else second}")
            differ += 1
            continue
        equal, what = same(a / name, b / name)
        print(f"{name}: {what}, {'equal' if equal else 'DIFFERENT'}")
        differ += not equal
    print("all equal" if not differ else f"{differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
