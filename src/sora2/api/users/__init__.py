"""People with accounts: profile, role, status and their credit balance."""
