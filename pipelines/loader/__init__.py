"""Shards -> training batches. plan: who reads what; stages: the worker's stream as plain generators; pool: the
shared image buffers; augment: the flip; loader: the DataLoader and the consumer's side."""
