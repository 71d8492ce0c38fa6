"""A TCP proxy on loopback that puts an emulated :class:`cooperllm.link.Link` between any client and a server.

For clients that are not an httpx client with :class:`cooperllm.link.LinkTransport` (a device process started as a
subprocess, any other program): they talk to the proxy's port as if it were the cloud's. ``cooperllm link-proxy``
runs one from the command line.
"""

from __future__ import annotations

import asyncio
import threading

from cooperllm.link import SLICE_BYTES, Link, LinkSpec


class LinkProxy:
    """A TCP proxy on loopback that puts an emulated link between any client and a server (no httpx needed).

    Bytes read from one side are delivered to the other one latency (+ jitter) later and no faster than the
    direction's token bucket allows; delivery is pipelined, as on a real link. LOSS applies per connection: a lost
    connection is reset right after it is accepted (a dead network as a client sees it). Run it in a thread with
    ``start()``/``stop()`` or ``with LinkProxy(...) as proxy: proxy.url``.
    """

    def __init__(self, link: Link | LinkSpec | str, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.link = link if isinstance(link, Link) else Link(link)
        self.target = target
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LinkProxy:
        self._thread = threading.Thread(target=self._run, name="link-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("link proxy did not start")
        return self

    def stop(self) -> None:
        """Close the listener, cancel every open connection, then end the loop's thread."""
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.link.lost():
            self.link.count(lost_requests=1)
            writer.transport.abort()
            return
        self.link.count(requests=1)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer, "up")),
            asyncio.ensure_future(self._pipe(up_reader, writer, "down")),
        ]
        try:
            await asyncio.gather(*pipes)
        except (ConnectionError, OSError):
            pass  # one side went away: tear down both
        finally:
            for task in pipes:
                task.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Reader side timestamps chunks; the delivery side releases each at arrival + delay, through the bucket."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            while True:
                data = await reader.read(SLICE_BYTES)
                await queue.put((self.link.clock() + self.link.delay(direction), data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - self.link.clock()
                if wait > 0:
                    await self.link.asleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                for pause in self.link.slices(len(data), direction):
                    if pause:
                        await self.link.asleep(pause)
                writer.write(data)
                await writer.drain()
                self.link.count(**{f"bytes_{direction}": len(data)})

        tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(deliver())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
