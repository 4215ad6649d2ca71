"""The catch-all handler: route, (authenticate), filter headers, stream to the upstream."""
