"""Identity federation: trusted external issuers, CEL mapping and conditions, principal bindings."""
