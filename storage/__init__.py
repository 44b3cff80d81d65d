"""The latent cache (Zarr v3 shards + Parquet manifest + provenance) and atomic file helpers."""
