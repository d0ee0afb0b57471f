"""Wrong arguments fail where the pipeline is built, naming the argument."""
import pytest

from transforms import (DeduplicateEvents, ReadCurrentsExport, ToRowBatches, ValidateEvents,
                        WriteShards)


@pytest.mark.parametrize("make, name", [
    (lambda: ReadCurrentsExport(""), "path"),
    (lambda: ReadCurrentsExport("/data", batch_size=0), "batch_size"),
    (lambda: ToRowBatches("bq", batch_size=-5), "batch_size"),
    (lambda: ToRowBatches(None), "source"),
    (lambda: DeduplicateEvents(num_shards=0), "num_shards"),
    (lambda: WriteShards("/tmp/x", "events", 0), "num_shards"),
    (lambda: WriteShards("/tmp/x", "", 2), "folder"),
])
def test_bad_arguments_raise_at_construction(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_a_catalogue_must_be_a_catalogue():
    with pytest.raises(TypeError, match="catalogue"):
        ValidateEvents({"users.messages.email.Click": {}})
