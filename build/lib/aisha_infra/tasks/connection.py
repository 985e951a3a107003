import socket

from pyinfra import host


def send_without_delay():
    """Turn off Nagle's algorithm on this host's SSH connection.

    pyinfra runs every fact and command in its own SSH channel: a few small packets each
    way. paramiko leaves Nagle on, so each exchange waits for the peer's delayed ACK
    (40 ms on Linux): a no-op run spent 3 of its 5 s waiting. The bytes sent are the same.
    """
    client = getattr(host.connector, "client", None)  # SSH connector, already connected
    transport = client.get_transport() if client else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):  # not through a ProxyCommand or a jump host
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
