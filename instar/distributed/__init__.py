"""Scale-out: extraction on a Ray cluster (`ray_index`). Ray is an optional extra (`pip install instar[ray]`):
nothing outside this package imports it, and this package imports it only when a Ray job runs."""
