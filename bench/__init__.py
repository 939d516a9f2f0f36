"""corral benchmarks: `python -m bench` runs them all and prints the results side by side.

One module per benchmark, each with `NAME` and `run(quick: bool, profile: bool) -> Table`:
queue_throughput, pickup_latency, job_overhead, executor_rss. Numbers are printed, never asserted.
"""
