"""`tollgate demo`: the pipeline with a fake provider, demo tenants and traffic."""
