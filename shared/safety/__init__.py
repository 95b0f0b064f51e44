"""Safe rollouts: health checks, bake times, pre-patch snapshots and rollback (issue 14)."""
