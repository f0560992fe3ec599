"""The outbound guard: mail goes only to globally routable addresses, whatever wraps them, unless the operator
lists them in DESKMAIL_OUTBOUND_ALLOW."""

from __future__ import annotations

import ipaddress

import pytest

from deskmail.workers.transports import netpolicy
from deskmail.workers.transports.base import Outcome, TransportFailure

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "255.255.255.255",
    "100.64.0.1", "100.100.100.200", "100.127.255.254",          # shared address space (cloud metadata too)
    "192.0.0.1", "192.0.0.100", "192.0.0.255",                   # IETF protocol assignments
    "192.0.2.1", "198.18.0.1", "198.51.100.7", "203.0.113.9", "240.0.0.1", "224.0.1.1", "192.88.99.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "fec0::1", "fec0:1::2", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",    # IPv4-mapped
    "::127.0.0.1", "::10.0.0.1",                                        # IPv4-compatible (deprecated)
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:0a00:0001::",           # 6to4 of 127.0.0.1, 169.254.169.254, 10/8
    "2001:0:4136:e378:8000:63bf:80ff:fffe",                             # Teredo, client 127.0.0.1
    "2001:0:7f00:1::1",                                                 # Teredo, server 127.0.0.1
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1",          # NAT64 of loopback, metadata, private
    "64:ff9b:1::1",
]
ALLOWED = ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2002:5db8:d822::1", "64:ff9b::808:808",
           "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_that_are_not_globally_routable_are_refused_in_every_wrapping(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert netpolicy.forbidden(ip) is not None
    assert not netpolicy.allowed(ip, ())


@pytest.mark.parametrize("address", ALLOWED)
def test_globally_routable_addresses_pass(address: str) -> None:
    assert netpolicy.allowed(ipaddress.ip_address(address), ())


@pytest.mark.parametrize("address", ["100.100.100.200", "2002:7f00:1::", "fec0::1", "192.0.0.100"])
def test_resolve_refuses_them_before_connecting_and_names_the_setting(address: str) -> None:
    with pytest.raises(TransportFailure) as caught:
        netpolicy.resolve(address, 25, ())
    assert caught.value.outcome is Outcome.CONFIGURATION
    assert address in caught.value.detail and "DESKMAIL_OUTBOUND_ALLOW" in caught.value.detail


def test_the_allow_list_is_the_only_way_around_it() -> None:
    allow = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("10.0.0.0/8")]
    assert netpolicy.resolve("100.100.100.200", 25, allow)
    assert netpolicy.allowed(ipaddress.ip_address("::ffff:10.0.0.1"), allow)  # the same host
    assert not netpolicy.allowed(ipaddress.ip_address("2002:0a00:0001::"), allow)  # another route, not listed
    assert not netpolicy.allowed(ipaddress.ip_address("127.0.0.1"), allow)
