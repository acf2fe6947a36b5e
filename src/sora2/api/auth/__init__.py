"""Sign-up, sign-in, sessions (rotating refresh tokens) and who is calling."""
