"""Test beds: what the tests, the demo and the benchmarks run ovs-service against.

- `ovsbed`: a private ovsdb-server + ovs-vswitchd in a temporary folder;
- `systemd_ns` (with `systemd_boot.sh`): a real systemd booted as PID 1 of
  private namespaces, running this checkout's code;
- `lane`: Open vSwitch under that systemd, two hosts and a traffic prober;
- `vm`, `kmodbed`: Debian's kernel with openvswitch.ko under qemu;
- `debroot` (with `debroot_enter.sh`): Debian roots of other releases
  (mmdebstrap, cached), chrooted or booting their own systemd; `rootlane`:
  the lane's switch on one; `upgrade`: the 3.1 -> 3.5 upgrade of Open vSwitch;
- `canon`: the switch's state as its own tools print it; `corpus`: the
  varied table of `tests/data`.

Imported one way, as `tests.harness.NAME`, from the repository's root.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
