"""WriteShards: a shard's consecutive elements are appended to one file, in order."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.sinks import WriteShards


def _write(tmp_path, elements):
    with TestPipeline() as p:
        paths = (p | beam.Create([elements], reshuffle=False)
                 | beam.FlatMap(lambda batch: batch)  # one bundle, in this order
                 | WriteShards(str(tmp_path), "events", 4))
        assert_that(paths, equal_to(["events/part-00000-of-00004.ndjson",
                                     "events/part-00002-of-00004.ndjson"]))


def test_consecutive_chunks_of_a_shard_make_one_file_in_order(tmp_path):
    _write(tmp_path, [(0, [b"a", b"b"]), (0, []), (0, [b"c"]), (2, [b"x"]), (2, [b"y"])])
    assert (tmp_path / "events/part-00000-of-00004.ndjson").read_bytes() == b"a\nb\nc\n"
    assert (tmp_path / "events/part-00002-of-00004.ndjson").read_bytes() == b"x\ny\n"
    assert not (tmp_path / "events/part-00001-of-00004.ndjson").exists()


def test_a_shard_coming_back_later_is_an_error_not_a_truncated_file(tmp_path):
    with pytest.raises(Exception, match="shard 0 arrived in two runs of elements"):
        _write(tmp_path, [(0, [b"a"]), (2, [b"x"]), (0, [b"b"])])
