"""The source stage: Snowflake sessions, the stats queries planning asks, chunk reads as Arrow batches, read
ahead of the writer (snowflake.py, prefetch.py). Imports only lib's top modules (config, errors, identifiers,
models, retry, typemap)."""
