"""Page templates of the query API (data only; listed in setup.cfg package_data)."""
