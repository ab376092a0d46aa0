"""What ColdCopy keeps in a bucket: the object-store interface and its adapters, the catalog's
records, and payloads stored as volumes."""
