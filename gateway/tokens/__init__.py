"""API tokens for service clients: signing keys, minting, the ledger, revocation."""
