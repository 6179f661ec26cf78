"""A variant's treatment of one request: the ordering it serves (the bundle's, or most popular), its diversity
weight and its exploration, applied around the recommender (`service.recommend.recommender`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from service.experiments.design import Variant
from service.experiments.diversity import diversify
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
    if variant.exploration <= 0 and variant.diversity <= 0:
        return Treated(await recommender.recommend(user_id, k, exclude_item_ids), None, 0)
    result = await recommender.recommend(user_id, k + variant.exploration_pool, exclude_item_ids)
    recs, bundle = result.recommendations, recommender.pipeline.bundle
    o = np.arange(len(recs.items))
    if variant.diversity > 0:
        o = diversify(recs.ranking_scores, bundle.item_embeddings[recs.items], k, variant.diversity)
    propensities, explored = None, 0
    if variant.exploration > 0:
        ranked = [bundle.item_ids[i] for i in recs.items[o].tolist()]
        untrained = (recs.items[o] >= bundle.manifest.dims.n_items).tolist()  # added live: no interactions behind
        chosen = explore(ranked, k, variant.exploration, exposure, rng, untrained)
        o, propensities, explored = o[chosen.order], chosen.propensities.tolist(), int(chosen.explored.sum())
    o = o[:k]
    recs = replace(
        recs, items=recs.items[o], retrieval_scores=recs.retrieval_scores[o], ranking_scores=recs.ranking_scores[o]
    )
    return Treated(replace(result, recommendations=recs), propensities, explored)
