"""The run stage, the only place that knows the order of a run: start or resume, work, reconcile, verify,
finalize (orchestrator.py), worker threads (worker.py), repairs (repair.py), progress (progress.py) and the
Step Functions arithmetic (step_functions.py). Imports every stage below it; nothing imports it but the
entry points (migrate.py, scripts/, bench/)."""
