"""The model catalog as the api shows it: `GET /api/models`."""
