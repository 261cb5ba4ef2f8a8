"""Analytics: DuckDB over the Parquet lake, for notebooks and the reporting API."""
