"""TLS on the gateway's listeners: contexts built and checked from the policy's files,
kept fresh when the files change, and handshake outcomes named for the metrics."""
