"""Size of the seen store (transforms.seen) per million events, as the pipeline writes it.

    .venv/bin/python bench/seen_store_size.py [events] [event_types]

Entries as _WriteShard stores them: (event_type, id, time, run_id, crc32) per kept event,
sorted, pickled and zstd-compressed in 16 shard files; ids are random UUIDs (Braze's
ids are UUIDs), times spread over 72 hours, 72 hourly runs. Prints bytes on disk per
million events, and the Python heap one shard's dict takes in a dedup worker.
"""
import random
import sys
import tracemalloc
import zlib
from collections import defaultdict

from transforms import codec
from transforms.dedup import shard_of
from transforms.testing import BASE_TIME

events = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
types = int(sys.argv[2]) if len(sys.argv) > 2 else 30
SHARDS = 16
rng = random.Random(7)
names = [f"users.messages.type{t}.Event" for t in range(types)]
runs = [f"20261124T{h % 24:02d}0000Z-{h:06x}" for h in range(72)]
shards = defaultdict(list)
for i in range(events):
    h = f"{rng.getrandbits(128):032x}"
    eid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    et = names[i % types]
    t = BASE_TIME + rng.randrange(72 * 3600)
    shards[shard_of(et, eid, SHARDS)].append(
        (et, eid, t, runs[(t - BASE_TIME) // 3600], zlib.crc32(eid.encode())))
total = sum(len(codec.pack(sorted(entries))) for entries in shards.values())
print(f"{events} events, {types} event types: {total / 2**20:.1f} MiB on disk in "
      f"{SHARDS} shards = {total / events * 1e6 / 2**20:.1f} MiB per million events")
entries = sorted(shards[0])
tracemalloc.start()
seen = {(e[0], e[1]): e for e in codec.unpack(codec.pack(entries))}
heap = tracemalloc.get_traced_memory()[0]
print(f"one shard in a dedup worker ({len(seen)} entries as a dict): "
      f"{heap / 2**20:.1f} MiB = {heap / len(seen):.0f} B per entry")
