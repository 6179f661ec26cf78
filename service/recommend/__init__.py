"""The request path: `recommender` (async front) -> `pipeline` (the one place that orders the stages) -> the stages
(`user_encoder`, `retrieval`, `filtering`, `ranking`), numpy in / numpy out. May import store and core only."""
