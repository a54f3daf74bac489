"""The plan stage: a run's tables planned once each, stored and never recomputed (tables.py), the strategy and
its stats (strategy.py), chunk cuts that follow the data (chunking.py), watermark windows (windows.py), the
memory and connection budget (budget.py), and a plan's text (render.py). Imports lib's top modules, the
ledger, the source and the target."""
