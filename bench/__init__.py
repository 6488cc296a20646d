"""lodger's benchmark harness: offline throughput, online serving latency, HF peers.

    python -m bench.throughput --shape qwen3-0.6b --workloads nano,fixed-256-256-1024,batch1
    python -m bench.serving --shape qwen3-0.6b --rates 4,16,inf
    python -m bench.report            # docs/benchmarks.md tables + the plot
    python -m bench.throughput --tiny # CPU smoke run (what CI runs)

Results are JSON lines under bench/results/; see docs/benchmarks.md.
"""
