"""The local target's busy-port check: whether 127.0.0.1:PORT is free, and who holds it when not."""

from __future__ import annotations

import os
import socket

from mldeploy.deploy.local import port_free, port_holder


def test_a_held_port_is_busy_and_names_its_holder():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_free(port)
        holder = port_holder(port)
        assert holder is not None and holder.endswith(f"(pid {os.getpid()})"), holder
    assert port_free(port)
    assert port_holder(port) is None


def test_a_port_held_on_every_address_is_busy_on_loopback_too():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        assert not port_free(busy.getsockname()[1])
