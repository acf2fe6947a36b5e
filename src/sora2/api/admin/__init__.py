"""Administrator routes: find users, adjust credits, suspend accounts."""
