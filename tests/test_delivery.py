"""Delivery to the partners' APIs (--deliver), against real HTTP servers on 127.0.0.1
that imitate each API (tests/fake_partners.py)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.currents_to_partners import run
from pipelines.options import bundled_sample
from tests.conftest import read_ndjson
from tests.fake_partners import (CREDENTIALS, SECRETS, SERVICE_ACCOUNT, FakePartner,
                                 dedup_key, delivery_args)
from transforms.deliver import ApiLimits, DeliverToPartner, DeliveryConfig
from transforms.testing import make_record, write_export

# runs real emulators or whole exports: excluded from the quick `pytest -m "not slow"`
pytestmark = pytest.mark.slow

PARTNERS = ("amplitude", "mixpanel", "mparticle", "segment")
TOKEN = ["--mixpanel-token", "mp-project-token"]  # a payload field, not a credential


@pytest.fixture
def credentials(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("MIXPANEL_SERVICE_ACCOUNT_USERNAME", "MIXPANEL_SERVICE_ACCOUNT_SECRET",
                 "MIXPANEL_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def written_keys(out: Path, partner: str) -> list[str]:
    return [dedup_key(partner, p) for p in read_ndjson(out / "partners" / partner)]


def assert_no_secret(out: Path, *texts: str) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), path
    for text in texts:
        assert not any(s in text for s in SECRETS)


def test_every_event_arrives_once_despite_429_and_503(
        fake_partners, credentials, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    for i, fake in enumerate(fake_partners.values()):
        fake.script = [429, 503]          # every partner: throttled, then an error
        fake.throttle_rate, fake.error_rate, fake.seed = 0.15, 0.15, i
        fake.retry_after = 0.5
    out = tmp_path / "out"
    started = time.monotonic()
    # one request in flight: requests already sent when a 429 comes are not recalled
    assert run(["--output", str(out), *TOKEN, *delivery_args(fake_partners),
                "--delivery-concurrency", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for p, fake in fake_partners.items():
        keys = written_keys(out, p)
        assert keys and len(keys) == summary["partners"][p]["written"]
        assert fake.received == {k: 1 for k in keys}, p     # each exactly once
        d = summary["delivery"][p]
        assert (d["delivered"], d["failed"], d["accounted"]) == (len(keys), 0, True)
        statuses = [r["status"] for r in fake.requests]
        assert d["requests"] == len(fake.requests)
        assert d["retried_requests"] == sum(s in (429, 503) for s in statuses) >= 2
        assert d["bytes_sent"] == sum(r["bytes"] for r in fake.requests)
        assert fake.early == [], f"{p}: requests before Retry-After elapsed"
        assert fake.key_violations == 0
        assert not read_ndjson(out / "delivery_failed" / p)
    assert time.monotonic() - started >= 0.5  # Retry-After was waited
    captured = capsys.readouterr()
    assert_no_secret(out, captured.out, captured.err, caplog.text)


def test_poison_event_isolated_batch_mates_delivered(fake_partners, credentials, tmp_path,
                                                     capsys, caplog):
    caplog.set_level(logging.DEBUG)
    dry = tmp_path / "dry"
    assert run(["--output", str(dry), *TOKEN, *delivery_args(fake_partners),
                "--deliver-dry-run"]) == 0
    assert all(not f.requests for f in fake_partners.values())  # a dry run sends nothing
    assert "dry run: segment: 1 requests" in capsys.readouterr().out
    poison = {p: sorted(written_keys(dry, p))[len(written_keys(dry, p)) // 2]
              for p in PARTNERS}
    for p, fake in fake_partners.items():
        fake.poison = {poison[p]}
        fake.echo_credentials = True  # even an API that echoes secrets leaks none
    out = tmp_path / "out"
    assert run(["--output", str(out), *TOKEN, *delivery_args(fake_partners)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for p, fake in fake_partners.items():
        keys = set(written_keys(out, p))
        assert fake.received == {k: 1 for k in keys - {poison[p]}}, p
        failed = read_ndjson(out / "delivery_failed" / p)
        assert [(f["id"], f["reason"], f["status"]) for f in failed] == [
            (poison[p], "rejected_by_partner", 400)], p
        assert set(failed[0]) == {"reason", "event_type", "id", "status", "error", "payload"}
        assert dedup_key(p, failed[0]["payload"]) == poison[p] and failed[0]["event_type"]
        assert failed[0]["error"]
        d = summary["delivery"][p]
        assert (d["delivered"], d["failed"], d["failed_reasons"]) == (
            len(keys) - 1, 1, {"rejected_by_partner": 1})
    # the APIs with a per-event report are not bisected: one more request at most
    assert len(fake_partners["mixpanel"].requests) == 1
    assert len(fake_partners["amplitude"].requests) == 2
    assert len(fake_partners["segment"].requests) > 2  # bisected
    captured = capsys.readouterr()
    assert_no_secret(out, captured.out, captured.err, caplog.text)


def test_partner_down_fails_the_run_others_complete(fake_partners, credentials, tmp_path,
                                                    capsys):
    fake_partners["segment"].down = True
    out = tmp_path / "out"
    args = ["--output", str(out), *TOKEN, *delivery_args(fake_partners),
            "--delivery-max-retries", "2"]
    assert run(args) == 1
    assert "not delivered to segment" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    failed = read_ndjson(out / "delivery_failed" / "segment")
    keys = written_keys(out, "segment")
    assert sorted(f["id"] for f in failed) == sorted(keys)
    assert {(f["reason"], f["status"]) for f in failed} == {("retries_exhausted", 503)}
    assert summary["delivery"]["segment"]["failed_reasons"] == {
        "retries_exhausted": len(keys)}
    tried = len(fake_partners["segment"].requests)
    assert summary["delivery"]["segment"]["requests"] == tried and tried % 3 == 0  # 1+2
    assert not fake_partners["segment"].received
    for p in ("amplitude", "mixpanel", "mparticle"):
        assert fake_partners[p].received == {k: 1 for k in written_keys(out, p)}
        assert summary["delivery"][p]["failed"] == 0


def test_rerun_delivers_the_same_keys(fake_partners, credentials, tmp_path):
    args = [*TOKEN, *delivery_args(fake_partners, ("amplitude", "segment")),
            "--partners", "amplitude,segment"]
    assert run(["--output", str(tmp_path / "one"), *args]) == 0
    first = {p: dict(fake_partners[p].received) for p in ("amplitude", "segment")}
    assert run(["--output", str(tmp_path / "two"), *args]) == 0
    for p in ("amplitude", "segment"):
        assert set(first[p]) == set(written_keys(tmp_path / "two", p))
        assert fake_partners[p].received == {k: 2 for k in first[p]}  # same keys again


def scheduled_segment_run(tmp_path: Path, fake_partners: dict, events: int,
                          retries: int) -> list[str]:
    """An export of ``events`` clicks and the arguments of a --state run delivering it
    to the fake Segment API."""
    click = "users.messages.email.Click"
    write_export(tmp_path / "in", {click: [make_record(click, seed=s)
                                           for s in range(events)]})
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--state", str(tmp_path / "state"), "--partners", "segment",
            *delivery_args(fake_partners, ("segment",)),
            "--delivery-max-retries", str(retries)]


def last_run(tmp_path: Path) -> tuple[Path, dict]:
    """The latest run's folder under ``out/runs`` and its summary."""
    runs = tmp_path / "out" / "runs"
    folder = runs / (runs / "_latest").read_text().strip()
    return folder, json.loads((folder / "summary.json").read_text())


def test_with_state_what_a_down_partner_missed_goes_with_the_next_run(
        fake_partners, credentials, tmp_path, capsys):
    args = scheduled_segment_run(tmp_path, fake_partners, events=8, retries=1)
    fake_partners["segment"].down = True
    assert run(args) == 1
    assert "the next run with this --state sends them again" in capsys.readouterr().err
    first, s1 = last_run(tmp_path)
    keys = written_keys(first, "segment")
    assert keys and s1["delivery"]["segment"]["failed_reasons"] == {
        "retries_exhausted": len(keys)}

    # the partner is back: no file is read again, what it missed is delivered
    fake_partners["segment"].down = False
    assert run(args) == 0
    assert "segment: sending again what" in capsys.readouterr().out
    second, s2 = last_run(tmp_path)
    d = s2["delivery"]["segment"]
    assert (s2["rows_read"], s2["partners"]["segment"]["written"]) == (0, 0)
    assert (d["carried_over"], d["delivered"], d["failed"], d["accounted"]) == (
        len(keys), len(keys), 0, True)
    assert fake_partners["segment"].received == {k: 1 for k in keys}

    # nothing is left to send: the next run sends nothing again
    assert run(args) == 0
    assert last_run(tmp_path)[1]["delivery"]["segment"]["carried_over"] == 0
    assert fake_partners["segment"].received == {k: 1 for k in keys}


def test_undelivered_files_removed_meanwhile_are_a_warning_not_a_crash(
        fake_partners, credentials, tmp_path, capsys):
    import shutil
    args = scheduled_segment_run(tmp_path, fake_partners, events=3, retries=0)
    fake_partners["segment"].down = True
    assert run(args) == 1
    first, _ = last_run(tmp_path)
    shutil.rmtree(first / "delivery_failed")  # someone cleaned up the old run
    fake_partners["segment"].down = False
    capsys.readouterr()
    assert run(args) == 0
    assert "files of an earlier run are gone" in capsys.readouterr().err
    assert last_run(tmp_path)[1]["delivery"]["segment"]["carried_over"] == 0
    assert not fake_partners["segment"].received


def test_only_failures_a_new_attempt_can_fix_are_read_again(tmp_path):
    from apache_beam.testing.util import assert_that, equal_to
    from transforms.deliver import ReadUndelivered
    from transforms.types import STATS
    path = tmp_path / "delivery_failed" / "segment" / "part-00000-of-00001.ndjson"
    path.parent.mkdir(parents=True)
    reasons = ["retries_exhausted", "rejected_by_partner", "unauthorized",
               "payload_too_large_for_partner"]
    path.write_bytes(b"".join(json.dumps({
        "reason": r, "event_type": "E", "id": str(i), "status": 503, "error": "x",
        "payload": {"messageId": str(i), "event": "E"}}).encode() + b"\n"
        for i, r in enumerate(reasons)))
    with TestPipeline() as p:
        out = p | ReadUndelivered("segment", [str(path)])
        assert_that(out.payloads, equal_to([(0, [b'{"messageId":"0","event":"E"}',
                                                 b'{"messageId":"2","event":"E"}'])]))
        assert_that(out[STATS], equal_to([{"delivery/segment/carried_over": 2}]),
                    label="stats")
    with pytest.raises(ValueError, match="unknown partner"):
        ReadUndelivered("braze", [str(path)])


def test_credentials_checked_before_reading(tmp_path, capsys, monkeypatch):
    for name in (*CREDENTIALS, "MIXPANEL_SERVICE_ACCOUNT_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGMENT_WRITE_KEY", CREDENTIALS["SEGMENT_WRITE_KEY"])
    code = run(["--input", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o"),
                *TOKEN, "--deliver", "segment,mixpanel,mparticle"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "MIXPANEL_API_SECRET" in err and "MIXPANEL_SERVICE_ACCOUNT_USERNAME" in err
    assert "MPARTICLE_API_KEY" in err and "SEGMENT" not in err
    assert "no .avro" not in err  # the input was never looked at
    assert run(["--output", str(tmp_path / "o"), *TOKEN, "--partners", "segment",
                "--deliver", "mixpanel"]) == 2
    assert "not in --partners" in capsys.readouterr().err
    assert run(["--output", str(tmp_path / "o"), "--partners", "segment", "--deliver",
                "segment", "--segment-endpoint", "http://127.0.0.1:1/v1"]) == 2
    assert "not a base URL" in capsys.readouterr().err


def test_amplitude_per_device_rate_respected(tmp_path, credentials):
    """One user with 70 events: rounds of <= 30 events per id, a second apart."""
    click = "users.messages.email.Click"
    rows = [make_record(click, seed=i, external_user_id="user-heavy") for i in range(70)]
    rows += [make_record(click, seed=100 + i) for i in range(20)]
    write_export(tmp_path / "in", {click: rows})
    fake = FakePartner("amplitude").start()
    try:
        out = tmp_path / "out"
        assert run(["--input", str(tmp_path / "in"), "--output", str(out),
                    "--partners", "amplitude", *delivery_args({"amplitude": fake},
                                                              ("amplitude",))]) == 0
        keys = written_keys(out, "amplitude")
        assert fake.received == {k: 1 for k in keys}
        assert fake.key_violations == 0
        ok = [r["at"] for r in fake.requests if r["status"] == 200]
        assert len(ok) >= 3 and ok[-1] - ok[0] >= 1.9
    finally:
        fake.stop()


def test_transform_batches_within_limits_splits_413_and_oversize(tmp_path):
    """DeliverToPartner alone: requests within (small) limits, a 413 split in halves,
    a payload over the per-message limit never sent."""
    fake = FakePartner("segment").start()
    fake.limits.max_events = 40   # the fake refuses more than the client will send...
    fake.limits.max_bytes = 6_000  # ...and a little less in bytes: 400, then halves
    try:
        payloads = [json.dumps({"type": "track", "event": "e", "messageId": f"m{i:03d}",
                                "userId": "u", "timestamp": "2026-11-24T08:00:00Z",
                                "properties": {"pad": "x" * 100}}).encode()
                    for i in range(300)]
        big = json.dumps({"type": "track", "event": "e", "messageId": "big", "userId": "u",
                          "properties": {"pad": "x" * 900}}).encode()
        limits = ApiLimits("/v1/batch", 40, 8_000, 800, False)
        cfg = DeliveryConfig(fake.url, {"write_key": CREDENTIALS["SEGMENT_WRITE_KEY"]},
                             backoff=0.01, api_limits=limits)
        out = tmp_path / "result.json"
        p = TestPipeline()
        result = (p | beam.Create([(0, payloads[:150]), (1, payloads[150:] + [big])])
                  | DeliverToPartner("segment", cfg))
        stats = result["stats"] | "Sum" >> beam.CombineGlobally(
            lambda xs: {k: sum(x.get(k, 0) for x in xs)
                        for k in {k for x in xs for k in x}})
        failed = result["failed"] | beam.combiners.ToList()
        (stats | beam.Map(lambda s, f: out.write_text(json.dumps([s, f])),
                          beam.pvalue.AsSingleton(failed)))
        run_result = p.run()
        run_result.wait_until_finish()
        counters = {c.key.metric.name: c.committed for c in run_result.metrics().query(
            MetricsFilter().with_namespace("delivery"))["counters"]}
        stats, failed = json.loads(out.read_text())
        assert fake.received == {f"m{i:03d}": 1 for i in range(300)}
        assert [(f["id"], f["reason"]) for f in failed] == [
            ("big", "payload_too_large_for_partner")]
        assert stats["delivery/segment/delivered"] == 300
        assert all(r["events"] is None or r["events"] <= 40 for r in fake.requests)
        assert any(r["status"] == 400 for r in fake.requests)  # over 6000 bytes: split
        assert stats["delivery/segment/requests"] == len(fake.requests)
        assert counters["segment/delivered"] == 300 and counters["segment/failed"] == 1
        assert counters["segment/requests"] == len(fake.requests)
        assert counters["segment/failed/payload_too_large_for_partner"] == 1
    finally:
        fake.stop()


def _deliver(partner: str, cfg: DeliveryConfig, payloads: list[bytes], out: Path):
    """DeliverToPartner alone on ``payloads``: (summed counters, failed records)."""
    with TestPipeline() as p:
        result = p | beam.Create([(0, payloads)]) | DeliverToPartner(partner, cfg)
        stats = result["stats"] | "Sum" >> beam.CombineGlobally(
            lambda xs: {k: sum(x.get(k, 0) for x in xs) for k in {k for x in xs for k in x}})
        failed = result["failed"] | beam.combiners.ToList()
        (stats | beam.Map(lambda s, f: out.write_text(json.dumps([s, f])),
                          beam.pvalue.AsSingleton(failed)))
    return json.loads(out.read_text())


def mixpanel_payloads(n: int) -> list[bytes]:
    return [json.dumps({"event": "e", "properties": {
        "$insert_id": f"i{i:03d}", "distinct_id": "u", "time": 1795508905,
        "token": "t"}}).encode() for i in range(n)]


def test_timeout_bounds_retries_and_unreachable_hosts_fail_cleanly(tmp_path):
    """--delivery-timeout stops a request's retries; a closed port is retried as a
    connection error; both end as retries_exhausted, the error without credentials."""
    fake = FakePartner("mixpanel", down=True).start()
    try:
        creds = {"api_secret": CREDENTIALS["MIXPANEL_API_SECRET"]}
        cfg = DeliveryConfig(fake.url, creds, max_retries=100, timeout=1.5, backoff=0.2)
        started = time.monotonic()
        stats, failed = _deliver("mixpanel", cfg, mixpanel_payloads(5), tmp_path / "a.json")
        assert time.monotonic() - started < 8
        assert 2 <= len(fake.requests) < 20 and stats["delivery/mixpanel/requests"] == len(
            fake.requests)
        assert {(f["reason"], f["status"]) for f in failed} == {("retries_exhausted", 503)}
    finally:
        fake.stop()
    cfg = DeliveryConfig(fake.url, creds, max_retries=2, backoff=0.01)  # nothing listens
    stats, failed = _deliver("mixpanel", cfg, mixpanel_payloads(3), tmp_path / "b.json")
    assert stats["delivery/mixpanel/requests"] == 3
    assert [f["reason"] for f in failed] == ["retries_exhausted"] * 3
    assert failed[0]["status"] is None and failed[0]["error"]
    assert not any(s in json.dumps(failed) for s in SECRETS)


def test_mixpanel_service_account_and_refused_credentials(tmp_path):
    fake = FakePartner("mixpanel").start()
    try:
        user, secret, (project,) = SERVICE_ACCOUNT
        cfg = DeliveryConfig(fake.url, {"username": user, "secret": secret,
                                        "project_id": project})
        stats, failed = _deliver("mixpanel", cfg, mixpanel_payloads(10), tmp_path / "a.json")
        assert stats["delivery/mixpanel/delivered"] == 10 and not failed
        fake.echo_credentials = True
        cfg = DeliveryConfig(fake.url, {"username": user, "secret": "wrong-SECRET",
                                        "project_id": project})
        stats, failed = _deliver("mixpanel", cfg, mixpanel_payloads(10), tmp_path / "b.json")
        assert [f["reason"] for f in failed] == ["unauthorized"] * 10  # not bisected
        assert failed[0]["status"] == 401 and len(fake.requests) == 2
        assert "wrong-SECRET" not in json.dumps(failed) and "***" in failed[0]["error"]
    finally:
        fake.stop()


def test_amplitude_batch_api(tmp_path):
    """--amplitude-api batch: POST /batch, same body, gzip; its 1,000 events/s per id."""
    fake = FakePartner("amplitude", api="batch").start()
    try:
        payloads = [json.dumps({"event_type": "e", "user_id": f"user-{i % 2}",
                                "insert_id": f"i{i:04d}", "time": 1}).encode()
                    for i in range(3000)]
        cfg = DeliveryConfig(fake.url, {"api_key": CREDENTIALS["AMPLITUDE_API_KEY"]},
                             amplitude_api="batch")
        stats, failed = _deliver("amplitude", cfg, payloads, tmp_path / "a.json")
        assert not failed and fake.received == {f"i{i:04d}": 1 for i in range(3000)}
        assert fake.key_violations == 0 and all(r["status"] == 200 for r in fake.requests)
        at = [r["at"] for r in fake.requests]  # 1,500 events per id: over a second
        assert len(at) >= 2 and at[-1] - at[0] >= 0.95
    finally:
        fake.stop()


def test_delivery_benchmark_runs(tmp_path):
    """bench/deliver.py end to end on the bundled sample, so it never rots (timings are
    not asserted)."""
    import subprocess
    import sys

    from tests.conftest import REPO
    result_file = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.deliver", "--data", bundled_sample(), "--json",
         str(result_file), "--skip-baseline"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(result_file.read_text())
    assert set(result["results"]) == {"e"} and result["delivered"] > 1000
    assert result["delivered_per_s"] > 0 and "received" in done.stdout
    assert not any(s in done.stdout + done.stderr for s in SECRETS)
