"""The HTTP API (FastAPI): an adapter over the Ledger facade, versioned under /v1."""
