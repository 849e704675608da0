"""`h36m evaluate`. evaluate: the metrics of a run on test shards; report: tables and files; plots: figures."""
