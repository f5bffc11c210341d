"""The gap benchmark's plot: median forwarding gap against table size.

One panel per bridge count, one line per method, log-scaled flows (x) and
gap (y); runs where forwarding never came back are left out of the line.

    python3 -m bench.plot [bench/out/gap.json] [bench/out/gap.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
STYLE = {  # method -> (color, marker, line style)
    "ovs-service": ("tab:blue", "o", "-"),
    "systemctl-hooks": ("tab:green", "s", "-"),
    "package-ovs-service": ("tab:purple", "o", "-."),
    "package-systemctl": ("tab:olive", "s", "-."),
    "floor": ("tab:red", "v", ":"),
    "package-floor": ("tab:pink", "v", ":"),
    "debian-reload": ("tab:orange", "^", "--"),
    "ovs-ctl": ("black", "D", "--"),
    "debian-restart": ("tab:gray", "x", ":"),
}


def plot_gaps(doc: dict[str, Any], png: Path) -> None:
    """Raise ImportError when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = doc["summary"]
    bridges = sorted({r["bridges"] for r in rows})
    fig, axes = plt.subplots(1, len(bridges), figsize=(max(7.0, 4.6 * len(bridges)), 5.2),
                             sharey=True, squeeze=False)
    handles: dict[str, Any] = {}
    for ax, b in zip(axes[0], bridges, strict=True):
        for key in STYLE:
            pts = sorted((r["flows"], r["gap_ms"]) for r in rows
                         if r["bridges"] == b and r["method"] == key and r["gap_ms"] is not None)
            if not pts:
                continue
            label = next(r["label"] for r in rows if r["method"] == key)
            color, marker, ls = STYLE[key]
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                              linestyle=ls, color=color, label=label)
            handles.setdefault(label, line)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{b} bridge{'s' if b > 1 else ''}")
        ax.set_xlabel("flows in all (spread over the bridges)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median forwarding gap (ms)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=8,
               frameon=False)
    m = doc.get("machine", {})
    fig.suptitle(f"Forwarding gap of a restart: ping every {doc.get('interval_s', 0.001) * 1000:g}"
                 f" ms, median of {doc.get('repeat')} runs\n{m.get('cpu', '')}, "
                 f"{m.get('cores', '')} cores, kernel {m.get('kernel', '')}, {m.get('ovs', '')}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT / "gap.json"
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT / "gap.png"
    try:
        plot_gaps(json.loads(src.read_text()), png)
    except ImportError:
        raise SystemExit("matplotlib is missing: apt-get install -y python3-matplotlib") from None
    print(f"written: {png}")


if __name__ == "__main__":
    main()
