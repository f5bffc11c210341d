"""The summary of the hitless lanes (`make test-hitless` prints it last).

Reads what the lanes wrote under .cache/hitless:
- restart.json (test_hitless_lane.py): per restart method, every try's figures;
- restart-trixie.json (test_hitless_trixie_lane.py): the same for ovs-service's
  own restarts on Debian 13's Open vSwitch (with "ovs_version");
- force-reload-kmod.json (the force-reload-kmod comparison with the stock
  script): {"ovs_service_gap_ms", "stock_gap_ms", "ratio",
  "ovs_service_lines_kept", "stock_lines_kept", "lines_total", "pairs"}.
A file that is missing is said "not run". The last line sums up: established
packets lost per method (on the bridge and across the tunnel), the
force-reload-kmod gap ratio to the stock script, and the Debian 13 lane's
established packets lost per method.

    python3 -m tests.lanes.hitless_summary [DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.harness.vm.build import REPO

DEFAULT_DIR = REPO / ".cache" / "hitless"
RESTART = "restart.json"
TRIXIE = "restart-trixie.json"
KMOD = "force-reload-kmod.json"
KMOD_KEYS = ("ovs_service_gap_ms", "stock_gap_ms", "ratio", "ovs_service_lines_kept",
             "stock_lines_kept", "lines_total")


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: unreadable: {e}") from None
    if not isinstance(doc, dict):
        raise SystemExit(f"{path}: not a JSON object")
    return doc


def _yes(flag: object) -> str:
    return "yes" if flag else "NO"


def restart_lines(doc: dict[str, Any] | None, title: str = "restart methods",
                  tag: str = "restarts") -> tuple[list[str], str]:
    """The table of restart methods, and the last line's part for them."""
    if doc is None:
        return [f"{title}: not run"], f"{tag}: not run"
    rows = [f"{title} ({doc.get('lane_seconds', '?')} s lane; established = pings "
            "every 10 ms, same bridge + tunnel):",
            f"  {'method':<46}{'tries':>6}{'est. lost':>10}{'new-conn gap':>14}"
            f"{'tcp alive':>10}{'vport+dp same':>14}{'openflow kept':>15}"]
    if doc.get("debian_units") is False:
        rows.append("  (Debian's units left out: no reinstall, no stock restart; "
                    "make test-hitless runs them)")
    parts = []
    for name, m in doc.get("methods", {}).items():
        kept = f"{m['openflow_lines_kept']}/{m['openflow_lines_total']}"
        same = m["tunnel_vport_untouched"] and m["datapath_untouched"]
        rows.append(f"  {name:<46}{m['tries']:>6}{m['established_lost']:>10}"
                    f"{m['new_conn_longest_gap_ms']:>11.0f} ms{_yes(m['tcp_survived']):>10}"
                    f"{_yes(same):>14}{kept:>15}")
        split = ""
        if "established_lost_bridge" in m:
            split = (f" ({m['established_lost_bridge']} on the bridge + "
                     f"{m['established_lost_tunnel']} across the tunnel)")
        parts.append(f"{name} {m['established_lost']}{split}")
    return rows, "established packets lost: " + ", ".join(parts)


def trixie_lines(doc: dict[str, Any] | None) -> tuple[list[str], str]:
    """restart_lines for the Debian 13 lane, named with its Open vSwitch version."""
    name = "Debian 13"
    if doc is not None and doc.get("ovs_version"):
        name += f" (Open vSwitch {doc['ovs_version']})"
    rows, part = restart_lines(doc, f"{name} restart methods", name)
    return rows, part if doc is None else f"{name}: {part}"


def kmod_lines(doc: dict[str, Any] | None) -> tuple[list[str], str]:
    if doc is None:
        return ["force-reload-kmod vs stock: not run"], "force-reload-kmod gap ratio: not run"
    missing = [k for k in KMOD_KEYS if k not in doc]
    if missing:
        raise SystemExit(f"{KMOD}: missing {', '.join(missing)}")
    pairs = doc.get("pairs")
    count = "" if pairs is None else ("1 pair" if pairs == 1 else f"medians of {pairs} pairs")
    title = f"force-reload-kmod vs stock ({count})" if count else "force-reload-kmod vs stock"
    rows = [f"{title}: gap {doc['ovs_service_gap_ms']:.0f} ms vs "
            f"{doc['stock_gap_ms']:.0f} ms (ratio {doc['ratio']:.2f}); lines kept "
            f"{doc['ovs_service_lines_kept']} vs {doc['stock_lines_kept']} of "
            f"{doc['lines_total']}"]
    return rows, (f"force-reload-kmod gap ratio to stock {doc['ratio']:.2f} "
                  f"({doc['ovs_service_gap_ms']:.0f}/{doc['stock_gap_ms']:.0f} ms"
                  f"{f', {count}' if count else ''})")


def summary(directory: Path) -> list[str]:
    restart_rows, restart_part = restart_lines(_load(directory / RESTART))
    kmod_rows, kmod_part = kmod_lines(_load(directory / KMOD))
    trixie_rows, trixie_part = trixie_lines(_load(directory / TRIXIE))
    return [*restart_rows, *kmod_rows, *trixie_rows,
            f"hitless: {restart_part}; {kmod_part}; {trixie_part}"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else DEFAULT_DIR
    print("\n".join(summary(directory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
