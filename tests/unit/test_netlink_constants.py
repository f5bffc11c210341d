"""The kernel constants the interfaces stage takes from pyroute2 have the
kernel headers' values, in whichever pyroute2 is installed (Debian 12's 0.7
and PyPI's newest both run this)."""

from __future__ import annotations

from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

from ovs_service import netlink
from ovs_service.stages import interfaces


def test_values_are_the_kernel_headers() -> None:
    # if.h: up, noarp, promisc, allmulti, multicast
    assert netlink.LINK_FLAGS_RESTORED == 0x1 | 0x80 | 0x100 | 0x200 | 0x1000
    # if_addr.h: nodad, optimistic, homeaddress, managetempaddr, noprefixroute, mcautojoin
    assert netlink.ADDRESS_FLAGS_RESTORED == 0x2 | 0x4 | 0x10 | 0x100 | 0x200 | 0x400
    # rtnetlink.h: RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_RA
    assert netlink.ROUTE_PROTOCOLS_SKIPPED == (1, 2, 9)
    route = interfaces.RouteState(4, 254, None, 0)
    assert (route.type, route.protocol, route.scope) == (1, 3, 0)  # unicast, boot, universe
    assert RTNH_F_ONLINK == 0x4
