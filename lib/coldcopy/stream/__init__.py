"""The stream pipeline's stages: zstd, chunked AES-256-GCM, checksums (DESIGN.md §4)."""
