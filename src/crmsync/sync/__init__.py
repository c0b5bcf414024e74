"""The sync service: the database side of the pure core's decisions (look-ups, persistence)."""
