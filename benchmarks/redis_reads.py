"""The Redis part of a recommendation request, alone: the event read (LRANGE) then the cache read (GET), from
`--concurrency` concurrent flows, sent one round trip each or through `CommandBatcher` (one pipeline per
event-loop turn). Reports flows per second and the client's CPU per flow.

    python -m benchmarks.redis_reads [--redis-url redis://127.0.0.1:6379/14] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from service.redis_batch import CommandBatcher, open_client

EVENTS = "bench:redis_reads:events"


async def measure(
    batcher: CommandBatcher, keys: list[str], concurrency: int, seconds: float
) -> tuple[int, float, float]:
    """(flows done, wall seconds, process CPU seconds)."""
    flows = 0
    stop = time.perf_counter() + seconds

    async def flow(i: int) -> None:
        nonlocal flows
        while time.perf_counter() < stop:
            await batcher.execute("lrange", EVENTS, 0, -1)
            await batcher.execute("get", keys[i % len(keys)])
            flows += 1
            i += 7

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(flow(w) for w in range(concurrency)))
    return flows, time.perf_counter() - t0, time.process_time() - cpu0


async def run(args: argparse.Namespace) -> None:
    client = open_client(
        args.redis_url, password=None, socket_timeout_s=1.0, connect_timeout_s=1.0, pool_size=max(args.concurrency)
    )
    keys = [f"bench:redis_reads:{i}" for i in range(1000)]
    await client.mset({k: b"x" * 256 for k in keys})  # an embedding of 64 float32
    await client.delete(EVENTS)
    await client.rpush(EVENTS, *[f"item{i}" for i in range(20)])
    print("| reads | concurrency | flows/s | client CPU per flow (us) |\n| --- | --- | --- | --- |")
    try:
        for batched in (False, True):
            batcher = CommandBatcher(client, batch=batched)
            for concurrency in args.concurrency:
                flows, wall, cpu = await measure(batcher, keys, concurrency, args.seconds)
                mode = "one pipeline per turn" if batched else "one round trip each"
                print(f"| {mode} | {concurrency} | {flows / wall:,.0f} | {cpu / flows * 1e6:.0f} |", flush=True)
    finally:
        await client.delete(*keys, EVENTS)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")  # never db 0: tests read it
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
