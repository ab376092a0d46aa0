"""ColdCopy: encrypted, verified PostgreSQL backups on DigitalOcean Spaces."""

__version__ = "0.1.0"
