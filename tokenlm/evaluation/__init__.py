"""What the probe stage measures: the labelled clips (clips), one vector per clip per
representation (representations), the linear probe (linear_probe), the rows of the probe
table (rows) and its markdown (probe_table)."""
