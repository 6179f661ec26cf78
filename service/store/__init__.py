"""The system of record and its caches: `records`, `schema` (SQL; Alembic `migrations`), `registry`, `recent` (a
user's recent events through one door), `events` and `cache` (Redis or in process), `breaker`. May import core."""
