"""The durable job queue (a table) and the worker that drains it through a provider."""
