"""The query side's HTTP API: reads the read models (MongoDB, Elasticsearch, Redis), caches hot reads
in Redis, and falls back to the write model while a projection has not caught up."""
