"""How clients reach the daemon: gRPC, the framed socket, the shared-file fast path, and the client libraries."""
