"""One adapter per Azure service: credentials, ARM, tables, blobs, log ingestion and query, patch calls."""
