"""The check stage: row-count reconciliation (reconcile.py) and content verification from one canonical form
(checksum.py, jsonb_text.py, verify.py). Imports lib's top modules, the ledger, the source and the target;
never the run that calls it."""
