"""Forwarding gap of a restart: ovs-service against the stock scripts.

In one systemd booted in a private namespace (netdev datapath), N flows are
spread over B bridges. One bridge carries traffic between two hosts (network
namespaces with a veth each into it), steered by explicit flows and a group,
never NORMAL; every other flow is filler that the probe traffic never
matches. Each restart method runs in turn, repeated, while ping sends every
millisecond (`ping -D -i 0.001`, replies to a file); the gap is the longest
interval between two replies. After each run the flow count of every
bridge is checked with `ovs-ofctl dump-aggregate`.

Methods (see `methods.METHODS`), each under the unit set it needs:
- `ovs-service restart` and `systemctl restart openvswitch`: ovs-service's units;
- `systemctl reload openvswitch-switch`: Debian's units (ovs-systemd-reload);
- `ovs-ctl restart --system-id=random`: the stock script run directly, on
  daemons that `ovs-ctl start --system-id=random` started, no unit owning them
  (under a unit, ovs-ctl and systemd would fight over the same daemons);
- optionally `systemctl restart openvswitch-switch` (Debian's units), which
  loses the flows: a reference row, marked.

Switching between ovs-service's and Debian's units swaps the unit files under
the running daemons (same unit names, same ExecStart=), so nothing restarts.
Going to or from the unit-less daemons restarts them: the tables are then
loaded again from the generated files, independently of ovs-service.

The package: `bed` (the namespace's switch and its tables), `probe` (ping and
the longest gap), `methods` (what is compared), `runs` (one run, the rounds,
the matrix), `profile` (where the time of `ovs-service restart` goes; its
inside part is `instrumented`), `report` (summaries, tables, the JSON, the
plot) and `__main__` (the command line).

    python3 -m bench.gap [--sizes 1000,100000] [--bridges 1,4] [--repeat 5]
    python3 -m bench.gap --full
"""
