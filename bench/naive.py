"""The naive baseline: what a first Beam job for this looks like, with default options.

ReadFromAvro -> key by id -> GroupByKey -> first -> json.dumps -> WriteToText.

    python -m bench.naive bench/data/500k /tmp/naive-out
"""
from __future__ import annotations

import json
import sys

import apache_beam as beam
from apache_beam.io.avroio import ReadFromAvro


def run(input_root: str, output: str, beam_args: list[str] | None = None) -> None:
    with beam.Pipeline(argv=beam_args or []) as p:
        (p
         | "Read" >> ReadFromAvro(input_root.rstrip("/") + "/**.avro")
         | "KeyById" >> beam.Map(lambda r: (r["id"], r))
         | "Group" >> beam.GroupByKey()
         | "First" >> beam.Map(lambda kv: next(iter(kv[1])))
         | "Json" >> beam.Map(json.dumps)
         | "Write" >> beam.io.WriteToText(output.rstrip("/") + "/events", ".json"))


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3:])
