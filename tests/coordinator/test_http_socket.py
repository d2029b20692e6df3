"""The coordinator's HTTP socket: connections it accepts have TCP_NODELAY. Without it (a socket made with proto 0,
which asyncio skips), every answer on a kept-alive connection waited ~40 ms for the client's delayed ACK."""

import asyncio
import socket

from coordinator.app import listening_socket


def test_accepted_connections_have_tcp_nodelay():
    async def scenario() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listening_socket("127.0.0.1", 0))
        async with server:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
        return nodelay

    assert asyncio.run(scenario()) != 0
