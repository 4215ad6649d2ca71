"""Verification keys: parsing (PEM, JWK, JWKS), key sets, sources that keep them fresh."""
