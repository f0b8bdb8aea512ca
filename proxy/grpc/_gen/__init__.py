"""Code generated from protos/ by ``python -m proxy.grpc.gen``; never edited by hand."""
