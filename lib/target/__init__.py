"""The target stage: PostgreSQL tables, the binary COPY wire, and how a table's rows meet its target (postgres.py,
wire.py, load_modes.py choosing a mode once per table, loaders.py writing a chunk through it, windows.py for
watermark windows, swap.py for shadow tables and backups). Imports lib's top modules and the ledger."""
