"""Items as a user meets them: `benchmarks.item_quality` in small (the CLI-built bundle, `python -m service`, HTTP).

Content twins (a trained item PUT again under a new id with its own title, genres and year) must land next to
the original; cold items (never trained, PUT live) must be recommended above chance; similar items must never
return the item itself.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.item_quality import release_years, run
from model_export.config import preset
from model_export.data import generate_synthetic, load_movielens
from tests.conftest import ML100K

WORDS = [
    "harbor",
    "silent",
    "crimson",
    "winter",
    "river",
    "empire",
    "garden",
    "shadow",
    "golden",
    "midnight",
    "desert",
    "ocean",
    "thunder",
    "paper",
    "glass",
    "north",
    "velvet",
    "iron",
    "summer",
    "broken",
    "hidden",
    "lantern",
    "orchard",
    "signal",
    "canyon",
    "marble",
    "echo",
    "falcon",
    "meadow",
    "copper",
]


def distinct_titles(years: list[int], seed: int = 0) -> list[str]:
    """Titles that tell items apart, MovieLens style ("<words> (<year>)": the csv reader takes the year from
    the title); the generator's are "Item <n> (<genres>; <year>)", nearly the same text for every item."""
    rng = np.random.default_rng(seed)
    words: set[str] = set()
    while len(words) < len(years):
        words.add(" ".join(rng.choice(WORDS, size=3, replace=False)).title())
    return [f"{w} ({year})" for w, year in zip(sorted(words), years, strict=True)]


def test_twins_land_on_their_originals_and_cold_items_beat_random(tmp_path: Path) -> None:
    dataset = generate_synthetic(preset("tiny").synthetic, seed=0)
    years = [int(y) for y in release_years(dataset)]
    dataset = replace(dataset, item_titles=distinct_titles(years))
    report = run(dataset, tmp_path, layout="csv", preset_name="tiny", cold_share=0.2, twins=20)
    twins, cold = report["twins"], report["cold_items"]
    assert twins["twins"] == 20
    assert twins["original_nearest"] >= 0.8  # tiny data, seeded: the original is the twin's nearest item
    assert twins["original_in_top_10"] >= 0.95
    assert cold["users"] > 5
    assert cold["service_recall@50"] > cold["random_recall@50"]
    assert report["meta"]["query_items"] > 20
    for name in ("service", "itemknn", "ease"):
        assert report["similar_items"][name]["recall@10"]["mean"] > 0.0, name


@pytest.mark.slow
@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="../shared/data/ml-100k not present")
def test_similar_items_beat_itemknn_and_twins_find_their_originals_on_ml100k(tmp_path: Path) -> None:
    report = run(load_movielens(ML100K), tmp_path, source=ML100K, layout="same", twins=60)
    similar = report["similar_items"]
    assert similar["service"]["recall@10"]["mean"] > similar["itemknn"]["recall@10"]["mean"]
    assert report["twins"]["original_nearest"] >= 0.8
    assert report["cold_items"]["service_over_random"] > 3.0
