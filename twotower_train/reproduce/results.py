"""The reproduction's results: the markdown table and page, and the γ trade-off plot with the
model card's operating point marked. Input is the report :mod:`twotower_train.reproduce.pipeline`
writes as ``results.json``."""

from __future__ import annotations

from pathlib import Path

CARD_RETAINED = 0.987
"""The card's quality retained at γ = 0.8, S = 16 (fraction of the AR baseline)."""
CARD_TOKENS_PER_FORWARD = 2.42
"""The card's throughput at that point, × AR; plotted against tokens per denoiser forward."""


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(report: dict) -> str:
    """One row per mode: exact match, retained, AR-tower NLL, tokens / denoiser forward, tok/s."""
    lines = [
        "| mode | exact match | quality retained | AR-tower NLL of output | tokens / denoiser "
        "forward | tokens / forward | agreement with AR | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["modes"]:
        lines.append(
            f"| {r['name']} | {r['exact_match']:.3f} | {_cell(r['retained'], '.1%')} | "
            f"{r['ar_nll']:.3f} | {_cell(r['tokens_per_denoiser_forward'], '.2f')} | "
            f"{r['tokens_per_forward']:.2f} | {r['exact_match_ar']:.2f} | "
            f"{r['tokens_per_s']:.1f} |"
        )
    return "\n".join(lines)


def card_point(report: dict) -> str:
    """How the γ = 0.8 row compares with the card's operating point and the demo's bar
    (≥ 2 tokens per denoiser forward at ≥ 95 % of AR's exact match)."""
    row = next((r for r in report["modes"] if r["name"] == "diffusion γ=0.8"), None)
    if row is None:
        return "γ = 0.8 was not measured."
    retained, per_forward = row["retained"] or 0.0, row["tokens_per_denoiser_forward"]
    bar = retained >= 0.95 and per_forward >= 2.0
    return (
        f"At γ = 0.8: {retained:.1%} of AR's exact match at {per_forward:.2f} tokens per "
        f"denoiser forward (card: {CARD_RETAINED:.1%} at {CARD_TOKENS_PER_FORWARD}× AR); the "
        f"bar of ≥ 95 % at ≥ 2 tokens per forward is {'met' if bar else 'not met'}."
    )


def masked_accuracy_line(report: dict) -> str:
    acc = report["masked_accuracy"]
    return (
        f"Denoiser masked-token accuracy on held-out answers (S = {acc['block_size']}, "
        f"mask ratio {acc['mask_ratio']}): {acc['accuracy']:.3f} vs the unigram baseline "
        f"{acc['unigram']:.3f} ({acc['masked']} masked positions)."
    )


def page(report: dict, plot_name: str | None = "tradeoff.png") -> str:
    """The results page: command, machine, wall times, masked accuracy, table, plot."""
    m = report["machine"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["wall_seconds"].items())
    out = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpus']} CPUs, torch {m['torch']}, {m['device']}, "
        f"{m['threads']} threads. Wall time per stage: {stages}.",
        "",
        f"Evaluation: {report['eval']['problems']} held-out task problems, "
        f"{report['eval']['max_new_tokens']} new tokens, greedy, batch "
        f"{report['eval']['batch']}; exact match = the final answer "
        "(`data_tools.reasoning_task.extract_answer`); quality retained = mode exact match / "
        "AR exact match; AR-tower NLL = mean NLL per token of the mode's continuation under the "
        "context tower.",
        "",
        masked_accuracy_line(report),
        "",
        markdown_table(report),
        "",
        card_point(report),
    ]
    if plot_name:
        out += ["", f"![γ trade-off]({plot_name})"]
    return "\n".join(out) + "\n"


def plot_tradeoff(report: dict, path: Path) -> None:
    """Quality retained vs tokens per denoiser forward over γ; the card's point as a star."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [r for r in report["modes"] if r["mode"] == "mask_diffusion"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    x = [r["tokens_per_denoiser_forward"] for r in rows]
    y = [100 * (r["retained"] or 0.0) for r in rows]
    ax.plot(x, y, "o-", label="mask diffusion (γ), S=16")
    for r, xi, yi in zip(rows, x, y):
        ax.annotate(
            f"γ={r['config']['confidence_threshold']:g}",
            (xi, yi),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    for r in report["modes"]:
        # A mode without denoiser forwards (mock-AR of a shifted denoiser is AR) has no x.
        if r["mode"] in ("mock_ar", "speculative") and r["tokens_per_denoiser_forward"]:
            ax.plot(
                r["tokens_per_denoiser_forward"],
                100 * (r["retained"] or 0.0),
                "s" if r["mode"] == "mock_ar" else "^",
                markersize=9,
                label=r["name"],
            )
    ax.plot(
        CARD_TOKENS_PER_FORWARD,
        100 * CARD_RETAINED,
        "*",
        markersize=14,
        color="red",
        label="model card (γ=0.8: 98.7 %, 2.42× AR)",
    )
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.axhline(95, color="grey", lw=0.8, ls=":", label="95 % of AR")
    ax.set_xlabel("generated tokens per denoiser forward (card: × AR throughput)")
    ax.set_ylabel("quality retained (% of AR exact match)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"held-out task, {report['eval']['problems']} problems", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
