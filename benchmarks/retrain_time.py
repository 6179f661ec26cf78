"""How long `python -m model_export retrain` takes on MovieLens-sized data.

    python -m benchmarks.retrain_time --data-dir ../shared/data/ml-100k [--preset default]

The MovieLens ratings are written in the data contract (model_export.contract), imported into a fresh SQLite
database (`python -m model_export import`'s code), and one retrain is run on it (a first one: no bundle is
published yet, so it trains the gate candidate and the served bundle and scores the candidate). Prints the
seconds and the gate's scores; everything goes into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from model_export.config import PRESETS, preset
from model_export.contract import write_contract
from model_export.data import load_movielens
from model_export.database import import_tables
from model_export.retrain import retrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reco-retrain-time-") as workdir:
        root = Path(workdir)
        paths = write_contract(load_movielens(args.data_dir), root / "data")
        url = f"sqlite:///{root / 'reco.sqlite3'}"
        t0 = time.perf_counter()
        counts = import_tables(url, paths["interactions"], paths["items"], paths["users"])
        imported = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = retrain(url, root / "bundles", preset(args.preset))
        seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "imported": counts,
                "import_s": round(imported, 1),
                "retrain_s": round(seconds, 1),
                "result": result.result,
                "candidate": result.candidate,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
