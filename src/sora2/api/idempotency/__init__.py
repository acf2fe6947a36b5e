"""Idempotency keys: a retried POST answers what the first one did, and is charged once."""
