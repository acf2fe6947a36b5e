"""The backend service: accounts, credits, videos, durable jobs, providers, storage."""
