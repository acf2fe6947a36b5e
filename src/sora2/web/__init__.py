"""The frontend service: pages, static assets and the mounted resilient proxy."""
