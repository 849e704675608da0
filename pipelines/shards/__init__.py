"""WebDataset shards of synchronised multi-view clips. sample: the sample format (importable without the writer);
writer: `h36m shard`; urls: where shards are; tarstream: the tar reader; verify and show: the commands."""
