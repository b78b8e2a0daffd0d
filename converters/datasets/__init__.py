"""One module per dataset; each reads the official on-disk layout (../shared/DATASETS.md)."""
