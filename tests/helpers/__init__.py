"""What the tests share: tiny models, trained runs, damaged files, and the scripts of the
subprocesses some tests start (workers, trainers, a cluster)."""
