"""The stream pipeline's stages: zstd, chunked AES-256-GCM, checksums (docs/encryption-format.md)."""
