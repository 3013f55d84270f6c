#!/usr/bin/env python3
"""lmtp-sink.py ADDR PORT - an LMTP server that accepts every message and discards it.

Used by bench/bench.py as a discard-like next hop for strictmxd
([local_delivery] lmtp = ADDR:PORT), to separate the cost of the final Maildir
delivery (fsync'd files on the same disk) from the cost of accepting and queueing.
Stops on SIGTERM. Loopback only.
"""

import asyncio
import signal
import sys


async def session(reader, writer):
    try:
        writer.write(b"220 sink.bench.test LMTP\r\n")
        rcpts = 0
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-sink.bench.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                rcpts = 0
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                rcpts += 1
                writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while True:
                    l = await reader.readline()
                    if not l or l == b".\r\n":
                        break
                writer.write(b"250 2.0.0 Ok discarded\r\n" * max(1, rcpts))
            elif verb == b"RSET" or verb == b"NOOP":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(addr, port):
    srv = await asyncio.start_server(session, addr, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with srv:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
