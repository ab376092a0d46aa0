"""The ``coldcopy`` command line."""
