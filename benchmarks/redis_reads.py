"""The Redis part of a recommendation request, alone: the event read (LRANGE) and the cache read (GET) at once,
from `--concurrency` concurrent flows, sent three ways: redis-py, one command per round trip on a pooled
connection (the service's clients for writes); redis-py, the two as one pipeline; and `ReadPipeline` (the
service's reads: every command issued in an event-loop turn in one write, on one connection, replies parsed
by hiredis as they arrive). Reports flows per second, latency per flow and the client's CPU per flow.

    python -m benchmarks.redis_reads [--redis-url redis://127.0.0.1:6379/14] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import uvloop

from service.store.redis_batch import ReadPipeline, open_client

EVENTS = "bench:redis_reads:events"
Flow = Callable[[str], Awaitable[Any]]


async def measure(flow: Flow, keys: list[str], concurrency: int, seconds: float) -> tuple[int, float, float, float]:
    """(flows done, wall seconds, process CPU seconds, median seconds per flow)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while (t := time.perf_counter()) < stop:
            await flow(keys[i % len(keys)])
            latencies.append(time.perf_counter() - t)
            i += 7

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return len(latencies), time.perf_counter() - t0, time.process_time() - cpu0, statistics.median(latencies)


def flows(client: aioredis.Redis, reads: ReadPipeline) -> dict[str, Flow]:
    async def separate(key: str) -> Any:
        return await asyncio.gather(client.lrange(EVENTS, 0, -1), client.get(key))

    async def pipelined(key: str) -> Any:
        async with client.pipeline(transaction=False) as pipe:
            pipe.lrange(EVENTS, 0, -1)
            pipe.get(key)
            return await pipe.execute()

    async def read_pipeline(key: str) -> Any:
        return await asyncio.gather(reads.execute("lrange", EVENTS, 0, -1), reads.execute("get", key))

    return {
        "redis-py, a round trip each": separate,
        "redis-py pipeline": pipelined,
        "ReadPipeline": read_pipeline,
    }


async def run(args: argparse.Namespace) -> None:
    client = open_client(
        args.redis_url, password=None, socket_timeout_s=1.0, connect_timeout_s=1.0, pool_size=2 * max(args.concurrency)
    )
    reads = ReadPipeline(args.redis_url, password=None, socket_timeout_s=1.0, connect_timeout_s=1.0)
    keys = [f"bench:redis_reads:{i}" for i in range(1000)]
    await client.mset({k: b"x" * 256 for k in keys})  # an embedding of 64 float32
    await client.delete(EVENTS)
    await client.rpush(EVENTS, *[f"item{i}" for i in range(20)])
    print(
        "| reads | concurrency | flows/s | median us per flow | client CPU per flow (us) |\n"
        "| --- | --- | --- | --- | --- |"
    )
    try:
        for concurrency in args.concurrency:
            for name, flow in flows(client, reads).items():
                await measure(flow, keys, concurrency, 0.2)  # connections opened, caches warm
                n, wall, cpu, median = await measure(flow, keys, concurrency, args.seconds)
                print(
                    f"| {name} | {concurrency} | {n / wall:,.0f} | {median * 1e6:,.0f} | {cpu / n * 1e6:.0f} |",
                    flush=True,
                )
    finally:
        await client.delete(*keys, EVENTS)
        await client.aclose()
        await reads.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")  # never db 0: tests read it
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    uvloop.run(run(parser.parse_args()))  # the service's event loop (uvicorn's `standard` extra)


if __name__ == "__main__":
    main()
