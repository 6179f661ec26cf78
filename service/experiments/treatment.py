"""A variant's treatment of one request: the ordering it serves (the bundle's, or most popular) and its
exploration, applied around the recommender (`service.recommend.recommender`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from service.experiments.design import Variant
from service.experiments.exploration import Exposure, explore
from service.recommend.recommender import RecommendationResult, Recommender


@dataclass(frozen=True, slots=True)
class Treated:
    result: RecommendationResult
    propensities: list[float] | None  # per slot, when the variant explores
    explored: int  # slots explored


async def treat(
    recommender: Recommender,
    variant: Variant,
    user_id: str,
    k: int,
    exclude_item_ids: list[str],
    exposure: Exposure,
    rng: np.random.Generator,
) -> Treated:
    if variant.ordering == "popular":
        return Treated(await recommender.popular(user_id, k, exclude_item_ids), None, 0)
    if variant.exploration <= 0:
        return Treated(await recommender.recommend(user_id, k, exclude_item_ids), None, 0)
    result = await recommender.recommend(user_id, k + variant.exploration_pool, exclude_item_ids)
    recs = result.recommendations
    ids = recommender.pipeline.bundle.item_ids
    ranked = [ids[i] for i in recs.items.tolist()]
    n_trained = recommender.pipeline.bundle.manifest.dims.n_items
    untrained = (recs.items >= n_trained).tolist()  # items added live: no interactions behind their embedding
    chosen = explore(ranked, k, variant.exploration, exposure, rng, untrained)
    o = chosen.order
    recs = replace(
        recs, items=recs.items[o], retrieval_scores=recs.retrieval_scores[o], ranking_scores=recs.ranking_scores[o]
    )
    return Treated(replace(result, recommendations=recs), chosen.propensities.tolist(), int(chosen.explored.sum()))
