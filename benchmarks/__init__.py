"""Measurements that run the harness: search quality, epoch throughput, the tracking path, the kNN bank,
the seed baselines on test."""
