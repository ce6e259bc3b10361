"""The loss curves of examples/train_hf.py's variants, from its --json output, as a PNG: each
step's loss faintly and its moving mean over WINDOW steps, one color per variant, and the
mean of the last WINDOW steps of each in the legend. Needs matplotlib:

    python benchmarks/plot_losses.py RESULTS.json OUT.png"""

import argparse
import json

WINDOW = 20


def moving_mean(values, window):
    """The mean of each value and up to window - 1 before it."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results["config"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for variant, result in results["results"].items():
        losses = result["losses"]
        steps = range(1, len(losses) + 1)
        tail = sum(losses[-WINDOW:]) / len(losses[-WINDOW:])
        line, = ax.plot(steps, moving_mean(losses, WINDOW),
                        label=f"{variant}: {result['tokens_per_s']:,.0f} tokens/s, last "
                              f"{WINDOW} steps' mean loss {tail:.4f}")
        ax.plot(steps, losses, color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax.set_xlabel("step (warm-up included)")
    ax.set_ylabel(f"loss (moving mean over {WINDOW} steps)")
    ax.set_title(f"{config['size']}: {config['layers']} layers, d_model {config['hidden']}, "
                 f"{config['batch']} x {config['seq']} tokens a step, {config['dtype']}, "
                 f"{config.get('card', config['device'])}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("results", help="examples/train_hf.py --json output")
    parser.add_argument("png", help="the PNG to write")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        plot(json.load(f), args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
