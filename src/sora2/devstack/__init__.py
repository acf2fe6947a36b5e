"""The developer stack: `sora2 dev` runs api and web, supervised; `sora2 doctor` explains.

It imports nothing of `sora2.api` or `sora2.web`: it runs them as processes and talks HTTP.
"""
