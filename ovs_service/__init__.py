"""ovs-service: keep Open vSwitch's OpenFlow state across restarts and module reloads."""

__version__ = "0.1.0"
