"""Training and export configuration: plain dataclasses and two presets (`tiny` for tests, `default`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 6000
    n_items: int = 3000
    n_genres: int = 12
    n_clusters: int = 10
    mean_interactions: float = 40.0
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity


@dataclass(frozen=True)
class TwoTowerConfig:
    embedding_dim: int = 64  # output dimension of both towers (the FAISS dimension)
    id_dim: int = 64
    categorical_dim: int = 8
    hidden_dim: int = 256
    # 50 -> 100 (the ranker's history features, EASE's score above all, read this window too): pipeline NDCG@10 on
    # the validation split of benchmarks.api_quality's training part (ml-100k) 0.1724 -> 0.1839 (docs/quality.md).
    history_length: int = 100
    # "sequential": each training event's history is the user's events before it (next-item prediction, for
    # logs whose order matters); "shuffled": other events of the user at random, redrawn every epoch (for data
    # where the held-out items are not the latest ones, e.g. a random split).
    history_sampling: Literal["sequential", "shuffled"] = "sequential"
    # ml-100k temporal, seed 0, two-tower Recall@100: 0.05 -> 0.1 moved it 0.533 -> 0.549; with the neighbour
    # features in the ranker, 0.1 / 0.15 / 0.2 give Recall@100 0.549 / 0.575 / 0.578, pipeline NDCG@10
    # 0.170 / 0.170 / 0.168.
    temperature: float = 0.15
    logq_correction: bool = True
    user_id_dropout: float = 0.1  # teaches the OOV user row, used for unknown users
    item_id_dropout: float = 0.1  # teaches the unknown-item row, used for items added after training
    # Pulls each item's content-only embedding (the unknown-item row, how an item added live is embedded)
    # toward its trained one. ml-100k, seeds 0-2, weight 0 / 0.3 / 1.0: cold-item Recall@50 4.3 / 5.6 / 6.4 x
    # random (cold items' share of the top 50: 13 / 16 / 20 %, they are 10 % of the catalogue); warm pipeline
    # NDCG@10 0.1660 / 0.1670 / 0.1625, two-tower Recall@100 0.566 / 0.557 / 0.556.
    content_distillation: float = 0.3
    text_features: bool = True  # item text through all-MiniLM-L6-v2 as an item-tower input (model_export.text)
    batch_size: int = 1024
    epochs: int = 20
    # At most this many batches an epoch (None: the whole log every epoch), each epoch still a fresh shuffle: a
    # time budget for a log too large to go through in full (benchmarks.train_scale's 25M run).
    steps_per_epoch: int | None = None
    early_stopping_patience: int = 2  # epochs without a better validation Recall@50
    refit: bool = True  # after the ranker is trained, retrain on all training data for the best epoch count
    lr: float = 3e-3
    weight_decay: float = 1e-6  # (AdamW's, on the dense weights; the id tables under lazy Adam take none)
    # The user and item id tables under lazy Adam (SparseAdam): each step updates the rows its batch touched
    # instead of whole tables (model_export.train._optimizers).
    sparse_embeddings: bool = True


@dataclass(frozen=True)
class RankerConfig:
    # Width 1: a learnt per-user and per-item bias. Wider id embeddings overfit the few ranker labels
    # (ml-100k temporal: NDCG@10 0.144 with 16 / 8, 0.147 with 1 / 2).
    id_dim: int = 1
    categorical_dim: int = 2
    cross_layers: int = 2
    hidden_dims: tuple[int, ...] = (256, 128)
    neighbours: int = 100  # neighbours kept per item for the neighbour_score features
    # Where the neighbour features' item-item weights come from: "ease" (EASE's positive weights, Steck 2019) or
    # "cosine" (ItemKNN's co-occurrence cosine). Pipeline NDCG@10 on the validation split of
    # benchmarks.api_quality's training part (ml-100k): cosine 0.1823, ease (lambda 100) 0.1839 (docs/quality.md).
    neighbour_weights: Literal["ease", "cosine"] = "ease"
    # lambda 100: the EASE baseline's best on a validation split of ml-100k (benchmarks.api_quality).
    ease_regularization: float = 100.0
    # EASE over the most interacted items only (it inverts an items x items matrix: 34 s at 18,000 items).
    ease_max_items: int = 20_000
    window_fraction: float = 0.2  # share of each user's training events held out of two-tower training as labels
    # Negatives mostly come from where serving candidates come from (the two-tower's top `hard_pool`, the
    # candidate count), so the ranker learns to order retrieved items rather than to tell them from random
    # ones; measured on ml-100k: NDCG@10 0.119 with 8 from the top 500 + 1 uniform, 0.071 with 4 from the top
    # 100 + 4 uniform (retrieval alone 0.112). 16 hard negatives instead of 8: pipeline NDCG@10 on the validation
    # split of benchmarks.api_quality's training part (ml-100k) 0.1827 -> 0.1839 (docs/quality.md).
    uniform_negatives: int = 1
    hard_negatives: int = 16
    # Negatives from the other candidate sources (ExportConfig.item_item_candidates, popular_candidates), so the
    # ranker learns to order what each source brings as served (off with them: see there).
    item_item_negatives: int = 0
    popular_negatives: int = 0
    hard_pool: int = 500
    # Negatives drawn from each source's top `negative_depth` only (0: from all it brings): the competition for the
    # top 10 is among each source's best. The gradient-boosted ranker's (GbmConfig.negative_depth).
    negative_depth: int = 0
    retrieved_positives_only: bool = True
    # A share of the label events seen as a brand-new user would be: an unknown user (the OOV rows, no user
    # features) knowing only their latest 1..new_user_max_events items before the event (otherwise the ranker only
    # learns long histories). Off: on the validation split of the API benchmark's training part (ml-100k, its
    # latest 20 %, disjoint from the benchmark's test part) 0.2 gave pipeline NDCG@10 0.1839 and new users 0.0317,
    # 0 gave 0.1865 and 0.0396. (0.2 had looked better on the full data's hold-out: 0.0691 vs 0.0635.)
    new_user_share: float = 0.0
    new_user_max_events: int = 10
    # The candidates whose id is dropped (two_tower.item_id_dropout of them, for the unknown-item row) also lose
    # their popularity and neighbour features, as an item added live has none: without it the ranker buries
    # items added live (none in the top 50 through the API on ml-100k: benchmarks.item_quality).
    cold_item_features: bool = True
    # "listwise": softmax over each event's positive and its negatives; "bce": pointwise. ml-100k temporal,
    # 3 seeds: pipeline NDCG@10 0.1533 listwise vs 0.1491 bce.
    loss: Literal["bce", "listwise"] = "listwise"
    batch_size: int = 2048
    epochs: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-6


@dataclass(frozen=True)
class GbmConfig:
    """The gradient-boosted ranker over the union of the sources (model_export.gbm), one ordering the exporter
    scores on validation beside the DCN ranker and each source alone."""

    enabled: bool = True
    # Candidates it orders per request beside the two-tower's: the item-item source's top from the user's latest
    # items (their history window); recorded in the manifest (candidates.gbm_item_item).
    item_item_candidates: int = 200
    # And the transition source's top from their latest items (service.recommend.features.TRANSITION_ITEMS), from
    # each item's `transitions` most frequent predecessors (model_export.train.item_transitions).
    transition_candidates: int = 50
    transitions: int = 50
    # And the most popular items (candidates.gbm_popular). Off: not measured on its own (with 50 of them, 4
    # negatives drawn from them and negative_depth 50 the ranker scored 0.0043 on amazon-sports' first 1,500 users;
    # negative_depth 50 alone 0.0061).
    popular_candidates: int = 0
    # Its training events' negatives: drawn from the two-tower's top `RankerConfig.hard_pool` (500), the item-item
    # top `item_item_candidates` (200) and the transition top `transition_candidates` (50) at one rate (4 %), as
    # the union the service serves holds them, and uniform. At unequal rates (16 from each of the first two, 4 from
    # the third) validation NDCG@10 was 0.0334 on amazon-sports against the item-item ordering's 0.0378
    # (benchmarks.api_quality's training part, 2026-12-07): a source over-represented among the negatives teaches
    # that its high scores mean a negative.
    hard_negatives: int = 20
    item_item_negatives: int = 8
    transition_negatives: int = 2
    popular_negatives: int = 0
    # From each source's whole list (RankerConfig.negative_depth 0). From the top 50 of each instead, validation
    # NDCG@10 fell to 0.0006 on amazon-sports and 0.0061 on its first 1,500 users (item-item 0.0378, popularity
    # 0.0355; 2026-12-07): the positives are rarely at the top, so the top's high scores were taught as negatives.
    negative_depth: int = 0
    uniform_negatives: int = 1
    # ml-100k's validation window, a tenth of its events left out: lambdarank NDCG@10 over each event's candidates
    # 0.455 at 221 trees with learning rate 0.1 and 200 rows a leaf; 0.450 at 300 trees with 0.05 and 50.
    trees: int = 300  # at most; early stopping on a tenth of the events keeps fewer
    early_stopping_rounds: int = 30
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_data_in_leaf: int = 200
    feature_fraction: float = 0.9
    threads: int = 0  # LightGBM's default: one per core


@dataclass(frozen=True)
class IndexConfig:
    # "auto": exact IndexFlatIP up to exact_max_items, IVF above (model_export.build_index); or force one.
    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_max_items: int = 20_000
    ivf_nlist: int = 0  # 0: about 4 sqrt(n_items), a power of two
    recall_at: int = 500  # depth at which recall against exact search is measured: the service's candidates
    recall_target: float = 0.96  # IVF nprobe: the smallest power of two reaching this recall on user queries
    recall_queries: int = 1000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 256


@dataclass(frozen=True)
class ExportConfig:
    preset: str = "default"
    seed: int = 0
    min_rating: float = 4.0  # explicit ratings at or above this are positives
    holdout_fraction: float = 0.2  # latest share of each user's positives held out for validation
    num_candidates: int = 500  # from the two-tower ANN search, at most (see depth_grid)
    # The ANN depths validation tries below num_candidates for the ordering served: the bundle serves the fewest
    # whose validation NDCG@10 is at least (1 - depth_tolerance) of num_candidates' (model_export.evaluate.
    # choose_depth; manifest candidates.depth). Fewer candidates are less ranking work per request.
    depth_grid: tuple[int, ...] = (100, 200, 300)
    depth_tolerance: float = 0.005
    # int8 weights (ONNX Runtime dynamic quantisation) served on the CPU by RECO_ONNX_PRECISION=auto where they
    # hold quality: validation scores the ordering served at its depth with the user tower and the ranker in
    # int8, then the ranker alone, then the user tower alone, and the bundle serves the first whose NDCG@10 is at
    # least (1 - int8_tolerance) of float32's (model_export.evaluate.choose_int8; manifest onnx_int8_served).
    # False: validation does not try, and auto serves float32.
    serve_int8: bool = True
    int8_tolerance: float = 0.005
    # Users the validation scores (each ordering through the pipeline: model_export.evaluate.choose_ranking), a
    # seeded sample when there are more; 0 = all. 10,000 users bound the standard error of NDCG@10 near 0.003 at
    # amazon-sports' 0.04 and cut its 35,598 users' scoring by 3.5 x.
    validation_users: int = 10_000
    # Added per request for the ranker by the other candidate sources (service.recommend.candidates), recorded in
    # the manifest. Off: the ranker over the ANN's candidates with 100 item-item and 20 popular ones added (and 8 + 2
    # negatives from them in training) scored validation NDCG@10 0.1576 against 0.1836 without, on
    # benchmarks.api_quality's training part of ml-100k (its latest 20 %, 2026-12-07). A source that orders the
    # candidates alone (the bundle's `ranking`, chosen on validation) brings its own top 500 either way.
    item_item_candidates: int = 0
    popular_candidates: int = 0
    # Serve the ordering that scored best on validation (the ranker or a source alone: model_export.evaluate.
    # choose_ranking) instead of the ranker: never worse than a source alone by construction. Under a source's
    # ordering, items added live keep the places the ranker gives them (service.recommend.ranking.
    # live_in_ranker_places). False (`--serve-ranker`): the ranker; the table is recorded and printed either way.
    serve_best_ordering: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    gbm: GbmConfig = field(default_factory=GbmConfig)
    index: IndexConfig = field(default_factory=IndexConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, ExportConfig] = {
    "default": ExportConfig(),
    "tiny": ExportConfig(
        preset="tiny",
        num_candidates=100,
        # The tests' preset serves the ranker: on its 300-user synthetic log popularity wins validation (NDCG@10
        # 0.161 against the ranker's 0.134), which would put every service test (fresh events moving the list, the
        # ranking stage's metrics, a hung Redis) on the unpersonalised path. The ordering chosen on validation is
        # tested on its own (tests/model_export/test_build.py, tests/service/test_candidates.py).
        serve_best_ordering=False,
        # And float32: the service tests compare answers with the float32 models (int8 on the CPU is tested on
        # its own: tests/model_export/test_build.py).
        serve_int8=False,
        synthetic=SyntheticConfig(n_users=300, n_items=200, n_genres=6, n_clusters=4, mean_interactions=20.0),
        two_tower=TwoTowerConfig(
            embedding_dim=16,
            id_dim=16,
            categorical_dim=4,
            hidden_dim=32,
            history_length=10,
            batch_size=256,
            epochs=3,
        ),
        ranker=RankerConfig(
            id_dim=4,
            categorical_dim=4,
            hidden_dims=(32,),
            batch_size=512,
            epochs=2,
            hard_pool=100,
        ),
        gbm=GbmConfig(item_item_candidates=50, transition_candidates=20, transitions=20, trees=50, min_data_in_leaf=20),
        index=IndexConfig(recall_queries=100),
    ),
}


def preset(name: str, **overrides: Any) -> ExportConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
