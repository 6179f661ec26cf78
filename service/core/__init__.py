"""What every layer stands on: `settings`, `bundle` (the loader that refuses bad bundles), `metrics`, `logs`,
`errors`, `device` (ONNX Runtime providers, FAISS GPU), thread pool, batching, sockets. May import nothing else."""
