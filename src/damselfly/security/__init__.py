"""Trust on the network: mTLS credentials (:mod:`.tls`), the fleet CA and host
certificates (:mod:`.certs`), and who may do what (:mod:`.authz`)."""
