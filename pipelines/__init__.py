"""The stages of `h36m`, one subpackage each, in the order they feed each other (each imports only its own stage
and those before it; `tests/test_layout.py` keeps it so):

    synth     a synthetic release in the exact H36M layout and formats
    extract   a release -> the extracted dataset (synchronised crops and annotations, Parquet)
    shards    the shard sample format, `h36m shard` (the writer), the tar reader, `verify`, `show`
    loader    shards -> training batches (the rank/worker plan, the stages, the shared image buffers)
    train     the training loop, its losses, config, checkpoints and schedule
    evaluate  the published tables from a run and test shards, as tables, files and plots
    demo      the whole chain on the synthetic release

`files` holds what every stage shares: the one atomic-write helper. Each package's `__init__` imports nothing, so a
hand-off format (`extract.dataset`, `shards.sample`) loads without its writer.
"""
