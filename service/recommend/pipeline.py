"""The one place that orders the stages: user encoding -> retrieval -> filtering -> ranking -> top k.

`Pipeline` is synchronous numpy in / numpy out and is what offline evaluation calls; its asynchronous front for
the API is `service.recommend.recommender.Recommender`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnxruntime as ort

from service.core.bundle import Bundle, variant_name
from service.core.device import faiss_gpus, model_precisions, onnx_providers, open_session
from service.core.settings import Settings
from service.recommend.candidates import ExtraCandidates, merge
from service.recommend.catalogue import ARRAYS, Catalogue
from service.recommend.features import history_window
from service.recommend.filtering import filter_candidates, top_k
from service.recommend.ranking import Ranker, live_in_ranker_places, open_gbm
from service.recommend.retrieval import Retriever
from service.recommend.similar import SimilarItems, SimilarityWeights, co_consumed, rank_similar
from service.recommend.user_encoder import UNKNOWN_USER, UserEncoder

SOURCE_DEPTH = 500  # candidates a source ranking alone brings of its own (ExportConfig.num_candidates' default)


@dataclass(frozen=True, slots=True)
class Recommendations:
    items: np.ndarray  # (k,) item indices, best first
    retrieval_scores: np.ndarray  # (k,) float32
    ranking_scores: np.ndarray  # (k,) float32
    n_retrieved: int
    n_after_filter: int
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, the stages this request took part in
    window: np.ndarray | None = None  # (L,) the history window the ranker saw (for explanations)
    embedding: np.ndarray | None = None  # (E,) the user embedding it was retrieved with
    encoded: bool = False  # whether that embedding was computed here (not given)
    batch_size: int = 1  # users in the batch this answer was computed in
    batch_timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, of the batch as a whole
    started: float = 0.0  # time.perf_counter() when its batch began (the queue wait ends)


@dataclass(frozen=True, slots=True)
class Query:
    """One user's request to `Pipeline.recommend_batch`."""

    user: int  # user index, -1 = unknown
    embedding: np.ndarray | None  # (E,); None: encode the user from `history` in the batch
    k: int
    num_candidates: int
    exclude: np.ndarray | None = None  # item indices never to return
    history: np.ndarray | None = None  # item indices, oldest first; None: the bundle's history


class Pipeline:
    def __init__(
        self,
        bundle: Bundle,
        encoder: UserEncoder,
        retriever: Retriever,
        ranker: Ranker,
        onnx_providers: list[str] | None = None,
        onnx_precisions: dict[str, str] | None = None,
        allow_repeats: bool = False,
        ranking: str | None = None,
        gbm: Ranker | None = None,
    ) -> None:
        self.bundle = bundle
        # False: every item of the user's data (any rating) and fresh events is filtered as already seen; True:
        # only negative feedback and exclusions are (repeats make sense for re-purchases, music).
        self.allow_repeats = allow_repeats
        self.onnx_providers = onnx_providers or ["CPUExecutionProvider"]
        self.onnx_precisions = onnx_precisions or {"user_tower": "fp32", "ranker": "fp32"}
        self.encoder = encoder
        self.retriever = retriever
        self.ranker = ranker
        self.gbm = gbm  # the gradient-boosted ranker (ranker_gbm.onnx), opened where it orders the candidates
        spec = bundle.manifest.candidates
        # How candidates are ordered: the bundle's choice (the ranker, the gradient-boosted ranker, or one source
        # alone), or `ranking`.
        self.ranking = ranking or spec.ranking
        if self.ranking == "gbm" and gbm is None:
            raise ValueError("ranking 'gbm' needs the gradient-boosted ranker (ranker_gbm.onnx)")
        # A source alone ranks its own top list too (beside the ANN's): the item-item source alone is EASE's
        # scoring over the whole catalogue it covers, popularity alone the most popular items. The gradient-boosted
        # ranker orders the item-item source's top beside the ANN's, as it was trained to.
        own_item_item, own_popular = {
            "item_item": (SOURCE_DEPTH, 0),
            "popular": (0, SOURCE_DEPTH),
            "gbm": (spec.gbm_item_item, spec.gbm_popular),
        }.get(self.ranking, (0, 0))
        item_item, popular = max(spec.item_item, own_item_item), max(spec.popular, own_popular)
        # Items added live have no popularity, item-item weights or transitions: the lists built here stay right.
        transition = spec.gbm_transitions if self.ranking == "gbm" else 0
        transitions = gbm.transitions if gbm is not None else None
        self.extra = ExtraCandidates(
            ranker.neighbours, bundle.item_log_popularity, item_item, popular, transitions, transition
        )
        self.twins: dict[int, np.ndarray] = {}  # item added live -> the trained items with its content
        self.catalogue: Catalogue | None = None  # the item arrays grown in place, from the first item added live
        # The unknown-user embedding depends on nothing but the model: compute it once.
        self.unknown_user_embedding = encoder.encode(np.array([UNKNOWN_USER]))[0]

    @classmethod
    def open(
        cls,
        bundle: Bundle,
        *,
        device: str = "auto",
        intra_op_threads: int = 1,
        precision: str = "auto",
        io_binding: str = "auto",
        allow_repeats: bool = False,
        ranking: str | None = None,
        precisions: dict[str, str] | None = None,
    ) -> Pipeline:
        """The pipeline on `device` (auto | cpu | cuda), its ONNX models in `precision` (auto | fp32 | fp16 | int8,
        see device.model_precisions; `precisions`: model -> precision instead) and called through IO binding per
        `io_binding` (auto: on CUDA | on | off)."""
        providers = onnx_providers(device)
        precisions = precisions or model_precisions(bundle, providers, precision)

        def session(model: str) -> ort.InferenceSession:
            return open_session(bundle.file(variant_name(model, precisions[model])), providers, intra_op_threads)

        user_session, ranker_session = session("user_tower"), session("ranker")
        encoder = UserEncoder(bundle, user_session, io_binding)
        retriever = Retriever(bundle, faiss_gpus(device))
        ranker = Ranker(bundle, ranker_session, io_binding)
        gbm = None
        if (ranking or bundle.manifest.candidates.ranking) == "gbm":
            gbm = open_gbm(bundle, intra_op_threads, ranker.neighbours)
        return cls(
            bundle,
            encoder,
            retriever,
            ranker,
            onnx_providers=user_session.get_providers(),
            onnx_precisions=precisions,
            allow_repeats=allow_repeats,
            ranking=ranking,
            gbm=gbm,
        )

    @classmethod
    def configured(cls, bundle: Bundle, settings: Settings) -> Pipeline:
        """`open` as the service's settings say (device, ONNX Runtime threads, precision, IO binding)."""
        return cls.open(
            bundle,
            device=settings.device,
            intra_op_threads=settings.ort_intra_op_threads,
            precision=settings.onnx_precision,
            io_binding=settings.ort_io_binding,
            allow_repeats=settings.allow_repeats,
        )

    def depth(self, user: int) -> int:
        """The ANN candidates the bundle serves `user` (its depth chosen on validation; unknown users, its full)."""
        spec = self.bundle.manifest.candidates
        return spec.new_user_depth if user == UNKNOWN_USER else spec.depth

    def user_index(self, user_id: str) -> int:
        return self.bundle.user_index.get(user_id, UNKNOWN_USER)

    def item_indices(self, item_ids: list[str]) -> np.ndarray:
        """Indices of the known ids among `item_ids` (unknown ids cannot be recommended anyway)."""
        return np.array([self.bundle.item_index[i] for i in item_ids if i in self.bundle.item_index], dtype=np.int64)

    def history(self, user: int, fresh: np.ndarray | None = None) -> np.ndarray:
        """The user's history, oldest first: the bundle's training history, then `fresh` events (item indices)."""
        history = self.bundle.history(user)
        return history if fresh is None or not len(fresh) else np.concatenate([history, fresh])

    def blocked(self, user: int, history: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """The items never to recommend to `user` whose history (the bundle's, then fresh events) is `history`:
        the user's negative feedback, `exclude`, and (unless repeats are allowed) the history."""
        parts = [self.bundle.negatives(user), exclude if exclude is not None else history[:0]]
        if not self.allow_repeats:
            parts.append(history)
        return np.concatenate(parts) if any(len(p) for p in parts) else history[:0]

    def encode(self, users: np.ndarray, histories: list[np.ndarray] | None = None) -> np.ndarray:
        return self.encoder.encode(users, histories)  # (B, E)

    def recommend(
        self,
        user: int,
        embedding: np.ndarray | None,
        k: int,
        num_candidates: int,
        exclude: np.ndarray | None = None,
        history: np.ndarray | None = None,
    ) -> Recommendations:
        """Retrieve, filter (already seen + `exclude`), rank and keep the top k for one user. `embedding` None:
        encode the user from `history`. `history` (item indices, oldest first) defaults to the bundle's; pass
        `self.history(user, fresh)` for fresh events."""
        return self.recommend_batch([Query(user, embedding, k, num_candidates, exclude, history)])[0]

    def recommend_batch(self, queries: Sequence[Query]) -> list[Recommendations]:
        """`recommend` for several users at once: one user-encoder call for those without an embedding, one
        FAISS search, one ranker call. Each answer is the one `recommend` gives that user alone."""
        t0 = time.perf_counter()
        histories = [self.bundle.history(q.user) if q.history is None else q.history for q in queries]
        missing = [j for j, q in enumerate(queries) if q.embedding is None]
        embeddings: list[np.ndarray] = [q.embedding for q in queries]  # type: ignore[misc]
        if missing:
            users = np.array([queries[j].user for j in missing], dtype=np.int64)
            encoded = self.encoder.encode(users, [histories[j] for j in missing])
            for row, j in enumerate(missing):
                embeddings[j] = encoded[row]
        t1 = time.perf_counter()
        # Ask for enough candidates that filtering the seen items still leaves num_candidates to rank.
        blocked = [self.blocked(q.user, h, q.exclude) for q, h in zip(queries, histories, strict=True)]
        wanted = [q.num_candidates + len(b) for q, b in zip(queries, blocked, strict=True)]
        found = self.retriever.search_each(np.stack(embeddings), wanted)
        t2 = time.perf_counter()
        windows = [history_window(h, self.encoder.history_length) for h in histories]
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        retrieved: list[tuple[np.ndarray, np.ndarray]] = []  # the ANN's candidates (what the ranker alone ranks)
        item_embeddings = self.bundle.item_embeddings
        for q, b, n, (scores, items), window, history, embedding in zip(
            queries, blocked, wanted, found, windows, histories, embeddings, strict=True
        ):
            items_kept, scores_kept = filter_candidates(items[:n], scores[:n], b)
            items_kept, scores_kept = items_kept[: q.num_candidates], scores_kept[: q.num_candidates]
            retrieved.append((items_kept, scores_kept))
            # The item-item source alone reads the whole history, as EASE does; for the ranker, the window it sees.
            extra = self.extra.add(history if self.ranking == "item_item" else window, b, items_kept)
            union = merge(items_kept, scores_kept, extra, embedding, item_embeddings)
            if self.ranking not in ("ranker", "gbm"):  # a source's score alone: ties go to the tie order
                tied = self.tie_order(*union)
                union = (union[0][tied], union[1][tied])
            kept.append(union)
        t3 = time.perf_counter()
        if self.ranking in ("ranker", "gbm"):
            model = self.gbm if self.ranking == "gbm" else self.ranker
            assert model is not None
            rankings = model.score_batch(
                [(q.user, h, c, s) for q, h, (c, s) in zip(queries, histories, kept, strict=True)]
            )
        else:
            rankings = [self.source_scores(c, s, h) for (c, s), h in zip(kept, histories, strict=True)]
            self.place_live_items(queries, histories, retrieved, kept, rankings)
        t4 = time.perf_counter()
        batch_timings = {"retrieval": t2 - t1, "filtering": t3 - t2, "ranking": t4 - t3}
        if missing:
            batch_timings["user_encoding"] = t1 - t0
        out = []
        for row, (q, (c, s), ranking, window, n) in enumerate(
            zip(queries, kept, rankings, windows, wanted, strict=True)
        ):
            best = top_k(ranking, q.k)
            # Per request, the stages it took part in (each lasted the batch's stage for it): a request whose
            # embedding was given has no user_encoding, whoever else in its batch was encoded.
            timings = {stage: seconds for stage, seconds in batch_timings.items() if stage != "user_encoding"}
            if q.embedding is None:
                timings["user_encoding"] = t1 - t0
            out.append(
                Recommendations(
                    items=c[best],
                    retrieval_scores=s[best],
                    ranking_scores=ranking[best],
                    n_retrieved=int((found[row][1][:n] >= 0).sum()),
                    n_after_filter=len(c),
                    timings=timings,
                    window=window,
                    embedding=embeddings[row],
                    encoded=q.embedding is None,
                    batch_size=len(queries),
                    batch_timings=batch_timings,
                    started=t0,
                )
            )
        return out

    def place_live_items(
        self,
        queries: Sequence[Query],
        histories: list[np.ndarray],
        retrieved: list[tuple[np.ndarray, np.ndarray]],
        kept: list[tuple[np.ndarray, np.ndarray]],
        rankings: list[np.ndarray],
    ) -> None:
        """Under a source's own ordering, the items added live among a user's candidates go where the ranker would
        put them were it served, i.e. among the ANN's candidates (ranking.live_in_ranker_places): one ranker call
        for the users who have any; `kept` and `rankings` are reordered in place."""
        n_trained = self.bundle.manifest.dims.n_items
        rows = [row for row, (items, _) in enumerate(retrieved) if len(items) and int(items.max()) >= n_trained]
        if not rows:
            return
        scored = self.ranker.score_batch([(queries[r].user, histories[r], *retrieved[r]) for r in rows])
        for row, ranker_scores in zip(rows, scored, strict=True):
            items, scores = kept[row]
            by_ranker = np.full(len(items), -np.inf, dtype=np.float32)  # the other sources' candidates: last
            ann = retrieved[row][0]
            mask, sorter = np.isin(items, ann), np.argsort(ann)
            by_ranker[mask] = ranker_scores[sorter[np.searchsorted(ann, items[mask], sorter=sorter)]]
            order, rankings[row] = live_in_ranker_places(rankings[row], by_ranker, items >= n_trained)
            kept[row] = (items[order], scores[order])

    def tie_order(self, items: np.ndarray, retrieval_scores: np.ndarray) -> np.ndarray:
        """The order a source alone breaks its ties in: popularity by the items' recent popularity (what is
        popular lately, then the two-tower's order), every other source by the two-tower score."""
        if self.ranking == "popular":
            return np.lexsort((-retrieval_scores, -self.bundle.item_recent_popularity[items]))
        return np.argsort(-retrieval_scores, kind="stable")

    def source_scores(self, items: np.ndarray, retrieval_scores: np.ndarray, history: np.ndarray) -> np.ndarray:
        """One source's own score of `items` (the ranking when the bundle orders by that source alone): the
        item-item weights summed over the user's whole history (EASE's score, its positive part), the two-tower
        score, or popularity. (n,) float32"""
        if self.ranking == "item_item":
            return np.asarray(self.ranker.neighbours.scores(items, history)[:, 0])
        if self.ranking == "popular":
            popularity: np.ndarray = self.bundle.item_log_popularity[items].astype(np.float32)
            return popularity
        return retrieval_scores.astype(np.float32)

    def add_items(
        self,
        ids: list[str],
        titles: list[str],
        dense: np.ndarray,
        embeddings: np.ndarray,
        twins: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Append items added live (not in the bundle): they join the catalogue (no popularity, no co-occurrence
        neighbours yet) and the index, recommendable and findable as similar from the next request on. Their
        rows go into the catalogue's spare room (service.recommend.catalogue: no copy of the item arrays per call) and a
        new bundle object holding views one item range longer replaces this one: a request in flight keeps
        its consistent view. Callers serialise calls (LiveItems holds a lock). `twins`: per item, the trained
        items whose content it has (it took their place); its similar items then blend in their co-consumption."""
        b = self.bundle
        if self.catalogue is None:
            self.catalogue = Catalogue(b.item_ids, b.item_titles, {name: getattr(b, name) for name in ARRAYS})
        n, k = len(ids), b.item_neighbours.shape[1]
        zeros = np.zeros(n, dtype=np.float32)
        views = self.catalogue.append(
            ids,
            titles,
            {
                "item_embeddings": embeddings.astype(np.float32),
                "item_dense": dense.astype(np.float32),
                "item_log_popularity": zeros,
                "item_recent_popularity": zeros,
                "item_neighbours": np.full((n, k), -1, dtype=np.int32),
                "item_neighbour_weights": np.zeros((n, k), dtype=np.float32),
            },
        )
        for j, found in enumerate(twins or []):
            if len(found):
                self.twins[len(b.item_ids) + j] = np.asarray(found, dtype=np.int64)
        bundle = replace(b, **views)  # type: ignore[arg-type]
        # The catalogue first, then the index: any id the index returns is then in the bundle a request reads.
        self.bundle = self.encoder.bundle = self.ranker.bundle = bundle
        if self.gbm is not None:
            self.gbm.bundle = bundle
        self.retriever.add(embeddings)

    def similar(
        self, item: int, k: int, exclude: np.ndarray | None = None, weights: SimilarityWeights | None = None
    ) -> SimilarItems:
        """The k items most similar to `item` (itself and `exclude` left out), best first: the bundle's blend of
        two-tower cosine and co-consumption (service.recommend.similar; `weights` overrides the manifest's)."""
        spec = self.bundle.manifest.similar_items
        weights = weights or SimilarityWeights(spec.embedding_weight, spec.co_consumption_weight)
        blocked = np.array([item], dtype=np.int64) if exclude is None else np.r_[item, exclude].astype(np.int64)
        _, candidates = self.retriever.search(
            self.bundle.item_embeddings[item][None, :], max(k, spec.candidates) + len(blocked)
        )
        co_items, co_weights = self.co_consumption(item)
        return rank_similar(item, candidates[0], self.bundle.item_embeddings, co_items, co_weights, weights, k, blocked)

    def co_consumption(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """What liking `item` predicts (service.recommend.similar.co_consumed). An item added live with a trained item's
        content has that item's: the original's list, the original itself first (it is the same content)."""
        originals = self.twins.get(item)
        if originals is None:
            return co_consumed(self.ranker.neighbours, item)
        lists = [co_consumed(self.ranker.neighbours, int(o)) for o in originals]
        rest = np.concatenate([np.zeros(0, np.float32), *(w for _, w in lists)])
        top = float(rest.max()) if len(rest) else 1.0
        items = np.concatenate([originals, *(i for i, _ in lists)])
        weights = np.concatenate([np.full(len(originals), top, dtype=np.float32), rest])
        unique, first = np.unique(items, return_index=True)  # an item on several lists: its first entry
        return unique, weights[first]

    def retrieve(self, users: np.ndarray, embeddings: np.ndarray, k: int) -> list[np.ndarray]:
        """Retrieval stage alone for a batch (for evaluation): top k by two-tower score, seen items removed."""
        blocked = [self.blocked(int(u), self.bundle.history(int(u))) for u in users]
        _, items = self.retriever.search(embeddings, k + max((len(b) for b in blocked), default=0))
        out = []
        for row, b in enumerate(blocked):
            kept, _ = filter_candidates(items[row], np.zeros(len(items[row]), np.float32), b)
            out.append(kept[:k])
        return out
