"""The pure core: names, manifests, the catalog merge, the job grammar, retention, schedules, alert
rules, metrics text, runbooks, recovery planning, LSN arithmetic.  No I/O, no client libraries.

Import-free on purpose: ``wal-fetch``'s fast path imports ``coldcopy.core.lsn`` with nothing else.
"""
