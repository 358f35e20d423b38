"""``python -m edgefleet.vm.relay PORT``: copy standard input to 127.0.0.1:PORT and back
(QEMU's guestfwd runs one per guest connection; the host side is never another address)."""

from __future__ import annotations

import os
import selectors
import socket
import sys


def main(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as upstream:
        upstream.settimeout(None)
        selector = selectors.DefaultSelector()
        selector.register(0, selectors.EVENT_READ)
        selector.register(upstream, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj == 0:
                    data = os.read(0, 65536)
                    if not data:
                        upstream.shutdown(socket.SHUT_WR)
                        selector.unregister(0)
                        continue
                    upstream.sendall(data)
                else:
                    data = upstream.recv(65536)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        view = view[os.write(1, view):]


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
