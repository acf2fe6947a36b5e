"""Credit balances and the ledger of every change to them."""
