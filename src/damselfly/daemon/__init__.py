"""The peer daemon (dfdaemon): piece store, piece server, downloads, gRPC services."""
