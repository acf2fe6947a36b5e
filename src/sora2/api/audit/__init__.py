"""The audit log: who did what to whom, when and why — every administrative change."""
