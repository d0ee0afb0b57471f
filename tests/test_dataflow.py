"""The Dataflow job, built offline (``--dry_run=True``), and the Flex Template's metadata.

A dry run makes the whole job (the portable pipeline proto with its steps, and the
package built from ``--setup_file``) and returns before Beam creates its Dataflow client:
no staging, no credentials, no request to Google. The tests make sure of it: asking for
credentials or creating the Dataflow client fails them, and names other than this
machine's do not resolve (conftest).
"""
import json
import shutil

import apache_beam as beam
import pytest
from apache_beam.internal.gcp import auth
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.internal import apiclient

from pipelines.currents_to_partners import build, run
from pipelines.options import LOCAL_ONLY, parse, parser
from tests.conftest import REPO

STEPS = {"ReadCurrentsExport", "ValidateEvents", "DeduplicateEvents", "FormatForPartners",
         "CommitOutputs", *(f"Write[{p}]" for p in ("amplitude", "mixpanel", "mparticle",
                                                      "segment"))}
DATAFLOW = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "my-project",
            "--region", "europe-west1", "--temp_location", "gs://my-temp-bucket/tmp",
            "--setup_file", str(REPO / "setup.py"), "--machine_type", "n2-standard-4",
            "--max_num_workers", "20", "--experiments=use_runner_v2"]


@pytest.fixture
def offline(monkeypatch):
    """Fail the test if the dry run looks up credentials or starts staging/submitting."""
    def refuse(*_, **__):
        raise AssertionError("a dry run must not authenticate nor contact Dataflow")
    monkeypatch.setattr(auth._Credentials, "_get_service_credentials", staticmethod(refuse))
    monkeypatch.setattr(apiclient, "DataflowApplicationClient", refuse)


def test_dataflow_job_is_built_offline_with_the_pipeline_steps(offline, tmp_path):
    cfg, _ = parse(["--input", "gs://my-input-bucket/currents", "--output",
                    "gs://my-output-bucket/run", "--mixpanel-token", "mp-placeholder"])
    p = beam.Pipeline(options=PipelineOptions(DATAFLOW, save_main_session=False))
    build(p, cfg, "gs://my-output-bucket/run/_temporary/dry")
    result = p.run()
    job = result.job
    assert result.state == "DONE"
    assert job.proto.name and job.proto.type_.name == "JOB_TYPE_BATCH"
    components = job.proto_pipeline.components
    top = {t.unique_name for t in components.transforms.values() if "/" not in t.unique_name}
    assert STEPS <= top
    # what each step is made of, as the job graph names it
    names = {t.unique_name for t in components.transforms.values()}
    assert {"ReadCurrentsExport/MatchFiles", "DeduplicateEvents/GroupByShard",
            "CommitOutputs/Commit"} <= names
    # the workers get our package: the sdist built from --setup_file is a staged artifact
    staged = [a.role_payload for env in components.environments.values()
              for a in env.dependencies]
    assert any(b"workflow.tar.gz" in payload for payload in staged)
    options = job.options.get_all_options()
    assert (options["project"], options["region"], options["machine_type"]) == (
        "my-project", "europe-west1", "n2-standard-4")


def test_cli_dry_run_checks_gs_paths_and_writes_nothing(gcs_emulator, monkeypatch, capsys):
    """The real command line: the input is listed and the output probed (on the
    emulator, with its loopback credentials), the job is built, nothing runs, nothing is
    sent to Dataflow and no summary is looked for."""
    def refuse(*_, **__):
        raise AssertionError("a dry run must not contact Dataflow")
    monkeypatch.setattr(apiclient, "DataflowApplicationClient", refuse)
    gcs_emulator.bucket("dry-run-in")
    gcs_emulator.bucket("dry-run-out")
    from pipelines.options import bundled_sample
    gcs_emulator.upload_tree(bundled_sample(), "dry-run-in", "currents")
    code = run(["--input", "gs://dry-run-in/currents", "--output", "gs://dry-run-out/run",
                "--mixpanel-token", "mp-placeholder", *DATAFLOW])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Dataflow job built" in out
    assert [b.name for b in gcs_emulator.client.list_blobs("dry-run-out")] == []


def flex_template_metadata() -> dict:
    return json.loads((REPO / "dataflow" / "metadata.json").read_text())


def test_flex_template_metadata_is_valid_for_the_dataflow_api():
    from google.cloud.dataflow_v1beta3 import TemplateMetadata
    meta = TemplateMetadata.from_json(json.dumps(flex_template_metadata()))
    assert meta.name and meta.description
    # the API's own type read every parameter we wrote, by name
    assert [p.name for p in meta.parameters] == [
        p["name"] for p in flex_template_metadata()["parameters"]]


def test_flex_template_parameters_are_the_cli_options():
    """metadata.json cannot drift from the command line: same options, same help."""
    ours = {a.dest: a for a in parser()._actions
            if a.option_strings and a.dest != "help" and a.dest not in LOCAL_ONLY}
    params = {p["name"]: p for p in flex_template_metadata()["parameters"]}
    assert set(params) == set(ours)
    for name, param in params.items():
        option = ours[name]
        assert f"--{name}" in option.option_strings, name  # the launcher passes --name=value
        assert param["isOptional"] == (name not in ("input", "output")), name
        assert param["helpText"] == option.help, name
        if option.choices:
            assert param["regexes"] == ["^(" + "|".join(option.choices) + ")$"], name
    # no default token in the template: optional, needed only with mixpanel in partners
    assert params["mixpanel_token"]["isOptional"] and "defaultValue" not in params[
        "mixpanel_token"]
    assert params["input"]["paramType"] == "GCS_READ_FOLDER"
    assert params["output"]["paramType"] == "GCS_WRITE_FOLDER"


def test_flex_template_parameters_reach_the_pipeline_config():
    """As the launcher passes them (--name=value): ours, none left over for Beam."""
    import re
    values = {"input": "gs://b/in", "output": "gs://b/out", "partners": "segment,mixpanel",
              "mixpanel_token": "t0k", "mparticle_environment": "development", "shards": "3",
              "batch_size": "500", "max_invalid_ratio": "0.25", "progress_every": "30",
              "forward_new_fields": "true",
              "strict": "false", "deliver": "",
              "amplitude_api": "batch", "deliver_dry_run": "true", "delivery_concurrency": "2",
              "no_backfill_identities": "true", "pii": "drop", "pii_events": "keep",
              "pii_amplitude": "keep", "pii_mixpanel": "drop", "pii_mparticle": "drop",
              "pii_segment": "keep", "pii_identities": "false",
              "parquet_output": "gs://b/lake", "bigquery_dataset": "my-project:currents",
              "bigquery_method": "storage_write_api",
              "bigquery_endpoint": "http://127.0.0.1:9050",
              "bigquery_expansion_service": "localhost:8097",
              "state": "gs://b/state", "dedup_window": "72h", "ledger_retention": "30d",
              "streaming": "false",
              "poll_interval": "30", "window": "15", "stop_after": "3600"}
    for p in flex_template_metadata()["parameters"]:
        for regex in p.get("regexes", []):
            assert re.fullmatch(regex, values[p["name"]]), p["name"]
    # every value but the endpoint, which storage_write_api's Java writer cannot use
    cfg, beam_args = parse([f"--{k}={v}" for k, v in values.items()
                            if k != "bigquery_endpoint"])
    assert beam_args == []
    assert (cfg.input, cfg.output, cfg.partners, cfg.mparticle_environment, cfg.shards,
            cfg.batch_size, cfg.max_invalid_ratio) == (
        "gs://b/in", "gs://b/out", ("segment", "mixpanel"), "development", 3, 500, 0.25)
    assert cfg.progress_every == 30.0
    assert cfg.partner_config()["mixpanel_token"] == "t0k"
    assert (cfg.forward_new_fields, cfg.strict) == (True, False)
    assert (cfg.deliver, cfg.amplitude_api, cfg.deliver_dry_run) == ((), "batch", True)
    assert (cfg.state, cfg.dedup_window, cfg.ledger_retention) == (
        "gs://b/state", 72 * 3600, 30 * 86400)
    assert (cfg.streaming, cfg.poll_interval, cfg.window, cfg.stop_after) == (
        False, 30.0, 15.0, 3600.0)
    assert (cfg.bigquery_dataset, cfg.bigquery_method, cfg.bigquery_expansion_service) == (
        "my-project:currents", "storage_write_api", "localhost:8097")
    assert (cfg.no_backfill_identities, cfg.pii_policy("events"), cfg.pii_policy("mixpanel"),
            cfg.pii_identities) == (True, "keep", "drop", False)


def test_streaming_job_is_built_offline_as_a_streaming_job(offline, tmp_path):
    from pipelines.streaming import build_stream
    cfg, _ = parse(["--streaming", "--input", "gs://my-input-bucket/currents", "--output",
                    "gs://my-output-bucket/stream", "--partners", "segment"])
    p = beam.Pipeline(options=PipelineOptions(
        [*DATAFLOW, "--streaming", "--enable_streaming_engine"], save_main_session=False))
    build_stream(p, cfg)
    result = p.run()
    assert result.job.proto.type_.name == "JOB_TYPE_STREAMING"
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    assert {"WatchInput", "DeduplicateStream", "WriteWindows"} <= names


def test_cli_builds_the_streaming_job_offline(offline, gcs_emulator, capsys):
    gcs_emulator.bucket("stream-in")
    gcs_emulator.bucket("stream-out")
    code = run(["--streaming", "--input", "gs://stream-in/currents", "--output",
                "gs://stream-out/live", "--partners", "segment", *DATAFLOW])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Dataflow streaming job built" in out
    assert [b.name for b in gcs_emulator.client.list_blobs("stream-out")] == []


def warehouse_dry_run(*extra: str) -> dict:
    """The Dataflow dry run of a job writing to my-project:currents (run id "dry"):
    its steps by name."""
    cfg, _ = parse(["--input", "gs://my-input-bucket/currents", "--output",
                    "gs://my-output-bucket/run", "--partners", "", "--bigquery-dataset",
                    "my-project:currents", *extra])
    p = beam.Pipeline(options=PipelineOptions(DATAFLOW, save_main_session=False))
    build(p, cfg, "gs://my-output-bucket/run/_temporary/dry")
    result = p.run()
    assert result.state == "DONE"
    return {t.unique_name: t for t in result.job.proto_pipeline.components.transforms.values()}


def test_dataflow_job_has_the_warehouse_steps_with_the_generated_schemas(offline):
    """--bigquery-dataset (file loads) and --parquet-output in the job graph; the step that
    creates the tables carries every generated schema (shown in Dataflow's UI)."""
    from schemas import warehouse
    transforms = warehouse_dry_run("--parquet-output", "gs://my-lake/currents")
    load = "WriteToWarehouse/WriteToBigQuery/BigQueryBatchFileLoads"
    assert {"WriteToWarehouse/PrepareTables", f"{load}/TriggerLoadJobsWithoutTempTables",
            f"{load}/ParDo(WriteRecordsToFile)", "WriteToWarehouse/MergeRuns",
            "WriteToWarehouse/WriteDeadLetter", "WriteParquet/WriteFiles",
            "WriteParquet/Commit"} <= set(transforms)
    shown = _shown(transforms["WriteToWarehouse/PrepareTables"])
    assert shown["dataset"] == "my-project:currents"
    assert json.loads(shown["partitioning"]) == {"type": "DAY", "field": "event_timestamp"}
    generated = sorted(warehouse.BIGQUERY_DIR.glob("users_*.json"))
    assert len(generated) == 68
    for path in generated:
        columns = json.loads(path.read_text())
        assert json.loads(shown[f"schema.{path.stem}"]) == [
            {k: c[k] for k in ("name", "type", "mode")} for c in columns]


def _shown(transform) -> dict:
    """A step's display data, label -> text, as the job graph carries it."""
    from apache_beam.portability.api import beam_runner_api_pb2
    shown = {}
    for d in transform.display_data:
        label = beam_runner_api_pb2.LabelledPayload.FromString(d.payload)
        shown[label.label] = label.string_value
    return shown


def test_dataflow_job_shows_the_storage_write_api_configuration(offline, monkeypatch,
                                                                 tmp_path):
    """--bigquery-method storage_write_api in an offline dry run: one write per event type
    into its staging table with its generated schema, its settings and the expansion
    service on the step; new fields go to a write with a schema per table. With no
    expansion service here (no cached jar: Beam's cache is an empty folder), the Java
    write itself is not expanded, and the step says so."""
    from apache_beam.utils.subprocess_server import JavaJarServer
    from schemas import warehouse
    monkeypatch.setattr(JavaJarServer, "JAR_CACHE", str(tmp_path / "jars"))
    transforms = warehouse_dry_run("--bigquery-method", "storage_write_api")
    assert {"WriteToWarehouse/PrepareTables", "WriteToWarehouse/BySchema",
            "WriteToWarehouse/NewFieldsByStreamingInserts", "WriteToWarehouse/MergeRuns",
            "WriteToWarehouse/WriteDeadLetter"} <= set(transforms)
    generated = sorted(warehouse.BIGQUERY_DIR.glob("users_*.json"))
    assert len(generated) == 68
    jar = f"beam-sdks-java-io-google-cloud-platform-expansion-service-{beam.__version__}.jar"
    for path in generated:
        step = f"WriteToWarehouse/StorageWriteApi[{path.stem}]"
        shown = _shown(transforms[f"{step}/ToBeamTypes"])
        assert shown["table"] == f"my-project:currents.{path.stem}__run_dry"
        assert shown["method"] == "STORAGE_WRITE_API"
        assert json.loads(shown["schema"]) == [
            {k: c[k] for k in ("name", "type", "mode")}
            for c in json.loads(path.read_text())]
        assert shown["semantics"].startswith("at_least_once")
        assert shown["triggering_frequency"].startswith("none")
        assert shown["create_disposition"].startswith("CREATE_NEVER")
        assert jar in shown["expansion_service"]
        assert shown["expanded"].startswith("no: dry run")
        assert f"{step}/JavaWriteNotExpanded" in transforms


def _storage_write_run(tmp_path, *extra: str) -> list[str]:
    return ["--output", str(tmp_path / "out"), "--partners", "", "--bigquery-dataset",
            "p:d", "--bigquery-method", "storage_write_api", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_storage_write_api_without_java_fails_fast(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    assert run(_storage_write_run(tmp_path)) == 2
    err = _one_error_line(capsys)
    assert "no Java" in err and "--bigquery-expansion-service" in err
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java on PATH")
def test_storage_write_api_without_the_jar_fails_fast(monkeypatch, tmp_path, capsys):
    """Java is here but not Beam's expansion service jar, and it cannot be downloaded
    (tests reach only this machine): one line naming the jar and where it goes."""
    from apache_beam.utils.subprocess_server import JavaJarServer
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(JavaJarServer, "JAR_CACHE", str(tmp_path / "jars"))
    assert run(_storage_write_run(tmp_path)) == 2
    err = _one_error_line(capsys)
    assert "beam-sdks-java-io-google-cloud-platform-expansion-service" in err
    assert str(tmp_path / "jars") in err and "could not be downloaded" in err


@pytest.mark.parametrize("dry_run", [False, True])
def test_storage_write_api_with_an_expansion_service_that_does_not_answer(
        dry_run, tmp_path, capsys):
    from tests.conftest import free_port
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    extra = ["--bigquery-expansion-service", address]
    if dry_run:
        extra += DATAFLOW
    assert run(_storage_write_run(tmp_path, *extra)) == 2
    err = _one_error_line(capsys)
    assert f"--bigquery-expansion-service {address}: nothing answers" in err


@pytest.mark.parametrize("args, words", [
    (["--bigquery-endpoint", "http://127.0.0.1:9050"], "does not reach storage_write_api"),
    (["--bigquery-expansion-service", "bad address"], "HOST:PORT"),
])
def test_storage_write_api_option_errors(args, words, tmp_path, capsys):
    assert run(_storage_write_run(tmp_path, *args)) == 2
    assert words in _one_error_line(capsys)


def test_expansion_service_is_only_for_storage_write_api(tmp_path, capsys):
    assert run(["--output", str(tmp_path / "out"), "--partners", "", "--bigquery-dataset",
                "p:d", "--bigquery-expansion-service", "localhost:8097"]) == 2
    assert "only" in _one_error_line(capsys)
