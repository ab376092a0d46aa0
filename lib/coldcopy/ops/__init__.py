"""The job system: queue and run records, the worker, launchers, retention cleanup and pins."""
