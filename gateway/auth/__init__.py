"""Bearer-token authentication: extraction, strict JWS parsing, verification, requirements."""
