"""The benchmark plot: throughput per engine (left) and latency against request rate (right)."""

from __future__ import annotations

from pathlib import Path

ENGINE_COLORS = {"lodger": "#1f77b4", "hf-static": "#ff7f0e", "hf-cb": "#2ca02c"}


def _rate_positions(rates: list) -> tuple[list[float], list[str]]:
    """x positions of the rates, 'inf' drawn one step beyond the largest finite rate."""
    finite = [float(r) for r in rates if r != "inf"]
    top = max(finite) * 2 if finite else 1.0
    return [top if r == "inf" else float(r) for r in rates], [str(r) for r in rates]


def plot(offline_runs: list[list[dict]], serving_runs: list[list[dict]], path: Path) -> None:
    """offline_runs / serving_runs: each a list of records of one run (same card and shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    groups = [(run[0]["shape"], r["workload"]) for run in offline_runs for r in run]
    groups = list(dict.fromkeys(groups))
    engines = list(dict.fromkeys(r["engine"] for run in offline_runs for r in run))
    width = 0.8 / max(1, len(engines))
    for j, engine in enumerate(engines):
        values = []
        for shape, workload in groups:
            match = [r for run in offline_runs for r in run if r["shape"] == shape
                     and r["workload"] == workload and r["engine"] == engine and "error" not in r]
            values.append(match[0]["output_tok_per_s"] if match else 0.0)
        positions = [i + (j - (len(engines) - 1) / 2) * width for i in range(len(groups))]
        left.bar(positions, values, width, label=engine, color=ENGINE_COLORS.get(engine))
    left.set_xticks(range(len(groups)), [f"{s}\n{w}" for s, w in groups], fontsize=8)
    left.set_ylabel("output tokens / s")
    left.set_yscale("log")
    left.set_title("Offline throughput (EOS ignored)")
    if engines:
        left.legend()
    for run in serving_runs:
        run = sorted(run, key=lambda r: float(r["request_rate"]))  # float("inf") sorts last
        xs, labels = _rate_positions([r["request_rate"] for r in run])
        name = f"{run[0]['shape']} {run[0]['workload']}"
        right.plot(xs, [r["ttft_ms"]["p50"] for r in run], "o-", label=f"{name} TTFT p50")
        right.plot(xs, [r["ttft_ms"]["p99"] for r in run], "o--", label=f"{name} TTFT p99")
        right.plot(xs, [r["tpot_ms"]["p50"] for r in run], "s-", label=f"{name} TPOT p50")
        right.set_xscale("log")
        right.set_xticks(xs, labels)
        right.minorticks_off()
    right.set_yscale("log")
    right.set_xlabel("request rate (requests / s)")
    right.set_ylabel("ms")
    right.set_title("lodger serve: latency against request rate")
    if serving_runs:
        right.legend(fontsize=8)
    cards = sorted({run[0]["card"] for run in offline_runs + serving_runs})
    fig.suptitle(", ".join(cards), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
