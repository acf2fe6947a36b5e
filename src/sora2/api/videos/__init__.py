"""Videos: create (charged), list, watch progress, cancel (refunded), download."""
