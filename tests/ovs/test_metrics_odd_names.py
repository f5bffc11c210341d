"""Against a private switch: a bridge whose name holds a
character Python's str.splitlines() breaks lines at (U+2028 here; Linux takes
it in an interface name, OVS in a bridge name) loses its restored counts at
the next metrics write (any save), since the merge re-reads the file with
splitlines()."""

from __future__ import annotations

from tests.harness.ovsbed import Cli, OvsBed

OF13 = "OpenFlow13"
ODD = "br\u2028x"


def _metric_text(cli: Cli) -> str:
    return (cli.metrics_dir / "ovs_service.prom").read_bytes().decode()


def test_restored_counts_of_an_odd_bridge_name_survive_the_next_save(ovs: OvsBed,
                                                                       cli: Cli) -> None:
    ovs.add_bridge(ODD, protocols=(OF13,))
    ovs.ofctl("-O", OF13, "add-flow", ODD, "priority=5,ip actions=drop")
    assert ODD in ovs.bridges() or ODD in ovs.vsctl("list-br")
    cli.save()
    ovs.ofctl("-O", OF13, "del-flows", ODD)  # (canon.wipe splits names at U+2028)
    cli.restore()
    assert f'ovs_service_restored_flows{{bridge="{ODD}"}}' in _metric_text(cli)
    cli.save()
    text = _metric_text(cli)
    assert f'ovs_service_restored_flows{{bridge="{ODD}"}}' in text, \
        "the last restore's counts of the bridge vanished after a save"
