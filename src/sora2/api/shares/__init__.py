"""Share links: a video anyone with an unguessable link may watch, until it is revoked."""
