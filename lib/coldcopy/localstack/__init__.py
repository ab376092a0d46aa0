"""The local stack: a throwaway PostgreSQL cluster, an S3 server on loopback and demo data."""
