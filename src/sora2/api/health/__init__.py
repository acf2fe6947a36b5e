"""Is the api fit to serve: database, worker heartbeat, provider state; and `/metrics`."""
