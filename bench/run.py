"""The benchmarks (`make bench`): save/restore time and the forwarding gap of a restart.

- flows: `ovs-service save`/`restore` against the stock `ovs-save` and its script
  (bench/flows_bench.py, with its defaults), on a private switch;
- gap: the forwarding gap and wall time of `ovs-service restart`, `systemctl
  restart openvswitch` (hooks), Debian's `systemctl reload openvswitch-switch`
  and the stock `ovs-ctl restart`, under a systemd booted in a namespace, plus a
  profile of ovs-service restart's critical window (bench/gap/).

    python3 -m bench.run                  # both; the gap bench's default matrix
    python3 -m bench.run --full           # the gap bench's whole matrix
    python3 -m bench.run --no-flows --sizes 1000 --bridges 1 --repeat 3

Options the gap bench knows (--sizes, --bridges, --repeat, --methods,
--profile-only, --no-profile...) are passed on to it: see
`python3 -m bench.gap --help`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gap import __main__ as gap

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", action=argparse.BooleanOptionalAction, default=True,
                        help="run bench/flows_bench.py with its defaults (default: yes)")
    parser.add_argument("--gap", action=argparse.BooleanOptionalAction, default=True,
                        help="run bench/gap/ (default: yes)")
    args, gap_args = parser.parse_known_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmarks need root (private switches, namespaces, systemd)")
    if importlib.util.find_spec("matplotlib") is None:
        print("note: matplotlib is missing, so there will be no plot; to get one: "
              "apt-get install -y python3-matplotlib", file=sys.stderr)
    began = time.monotonic()
    status = 0
    if args.flows:
        print("== save and restore against ovs-save (bench/flows_bench.py) ==", flush=True)
        status |= subprocess.run([sys.executable, "-m", "bench.flows_bench"],
                                 cwd=HERE.parent, check=False).returncode
    if args.gap:
        print("\n== forwarding gap of a restart (bench/gap/) ==", flush=True)
        status |= gap.main(gap_args)
    print(f"\nbenchmarks done in {(time.monotonic() - began) / 60:.1f} min")
    return status


if __name__ == "__main__":
    sys.exit(main())
