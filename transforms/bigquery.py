"""WriteToWarehouse: clean events into BigQuery, one table per event type, rerun-safe.

Steps (docs/bigquery.md says why):

1. ``PrepareTables`` (once): create the dataset, each event type's table (columns from
   ``schemas/bigquery/``, partitioned by the day of ``event_timestamp``, clustered by the
   user ids) and the dead-letter table when missing; add the run's new fields as NULLABLE
   columns; create one staging table per type for this run (expires after a day).
2. Beam's ``WriteToBigQuery`` (file loads, streaming inserts or the Storage Write API:
   one write per event type with its static schema, new fields by streaming inserts)
   into the staging tables. Rows that would not load are held back by a check
   (``transforms.bigquery_rows``); rows BigQuery still rejects come back from the sink.
3. ``MergeRuns`` (once, after every write): ``MERGE`` each staging table into its table on
   ``(event_type, id)``, inserting only the events not already there, then drop the
   staging table. A rerun of the same input inserts nothing.
4. Rejected rows -> ``<dataset>.currents_dead_letter`` and ``dead_letter/`` with reason
   ``bigquery_rejected`` and BigQuery's error.

``endpoint`` points every call at a BigQuery-compatible endpoint (a local emulator, a
private endpoint) through ``WriteToBigQuery``'s ``test_client`` and our own clients.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from typing import Any, Iterator
from urllib.parse import urlparse

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics

from schemas import warehouse
from transforms import codec
from transforms.bigquery_rows import check_row, columns_of, error
from transforms.columns import (ObserveColumns, columns_for, known_columns, table_of,
                               tables)
from transforms.sinks import create_ndjson
from transforms.types import ShardLines

METHODS = {"file_loads": WriteToBigQuery.Method.FILE_LOADS,
           "streaming_inserts": WriteToBigQuery.Method.STREAMING_INSERTS,
           "storage_write_api": WriteToBigQuery.Method.STORAGE_WRITE_API}
REJECTED = "bigquery_rejected"
# Beam's Java expansion service for the Storage Write API (Beam starts this jar with Java
# unless --bigquery-expansion-service names a running one)
EXPANSION_SERVICE_TARGET = "sdks:java:io:google-cloud-platform:expansion-service:build"
STAGING_HOURS = 24


def staging_name(table: str, run_id: str) -> str:
    """This run's staging table for ``table`` (PrepareTables makes it, MergeRuns drops it)."""
    return f"{table}__run_{run_id[:16]}"


def parse_dataset(dataset: str) -> tuple[str, str]:
    """``PROJECT:DATASET`` -> (project, dataset)."""
    project, _, name = dataset.partition(":")
    if not project or not name:
        raise ValueError(f"--bigquery-dataset must be PROJECT:DATASET, not {dataset!r}")
    return project, name


def _is_loopback(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def bigquery_client(project: str, endpoint: str | None) -> Any:
    """A google-cloud-bigquery client: Google's API, or ``endpoint`` (anonymous when it
    is on this machine, as an emulator is; Application Default Credentials otherwise)."""
    from google.cloud import bigquery
    if endpoint is None:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    credentials = None
    if _is_loopback(endpoint):
        from google.auth.credentials import AnonymousCredentials
        credentials = AnonymousCredentials()
    return bigquery.Client(project=project, credentials=credentials,
                           client_options=ClientOptions(api_endpoint=endpoint))


class EndpointClient:
    """The client ``WriteToBigQuery`` takes as ``test_client``, for another endpoint.

    Beam uses that one object both as its apitools BigQuery client (tables, jobs) and as a
    google-cloud-bigquery client (``insert_rows_json`` for streaming inserts): this gives
    each call to the right client, both pointed at ``endpoint``. Pickled as its settings;
    the clients are made where it is used."""

    def __init__(self, project: str, endpoint: str):
        self._project, self._endpoint = project, endpoint.rstrip("/")
        self._clients = None

    def __getstate__(self):
        return {"_project": self._project, "_endpoint": self._endpoint, "_clients": None}

    def _made(self):
        if self._clients is None:
            from apache_beam.io.gcp.internal.clients import bigquery as apitools_bigquery
            if _is_loopback(self._endpoint):
                credentials = None
            else:
                from apache_beam.internal.gcp import auth
                from apache_beam.options.pipeline_options import PipelineOptions
                credentials = auth.get_service_credentials(PipelineOptions([]))
            api = apitools_bigquery.BigqueryV2(
                url=f"{self._endpoint}/bigquery/v2/", credentials=credentials,
                get_credentials=False, response_encoding="utf8")
            self._clients = (api, bigquery_client(self._project, self._endpoint))
        return self._clients

    def insert_rows_json(self, *args, **kwargs):
        return self._made()[1].insert_rows_json(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._made()[0], name)


def _schema_fields(columns: list[dict]) -> list:
    from google.cloud import bigquery
    return [bigquery.SchemaField(c["name"], c["type"], mode=c["mode"],
                                 description=c.get("description")) for c in columns]


def _ensure_columns(client, table_id: str, columns: list[dict]) -> list[str]:
    """Add ``columns`` missing from the table as NULLABLE (or REPEATED) columns.

    The schema patch is BigQuery's way; the ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``
    after it changes nothing on BigQuery, and is what the local emulator needs to store
    the column (its patch updates only its catalogue)."""
    table = client.get_table(table_id)
    have = {f.name for f in table.schema}
    new = [c for c in columns if c["name"] not in have]
    if not new:
        return []
    new = [{**c, "mode": "REPEATED" if c["mode"] == "REPEATED" else "NULLABLE"} for c in new]
    table.schema = list(table.schema) + _schema_fields(new)
    client.update_table(table, ["schema"])
    for c in new:
        kind = f"ARRAY<{c['type']}>" if c["mode"] == "REPEATED" else c["type"]
        client.query(f"ALTER TABLE `{table_id}` ADD COLUMN IF NOT EXISTS "
                     f"`{c['name']}` {kind}").result()
    return [c["name"] for c in new]


def _create_table(client, table_id: str, columns: list[dict], partitioned: bool,
                  expires: datetime.datetime | None = None) -> None:
    from google.api_core.exceptions import Conflict
    from google.cloud import bigquery
    table = bigquery.Table(table_id, schema=_schema_fields(columns))
    if partitioned:
        layout = tables()
        table.time_partitioning = bigquery.TimePartitioning(
            type_=layout["time_partitioning"]["type"],
            field=layout["time_partitioning"]["field"])
        table.clustering_fields = layout["clustering"]
    if expires is not None:
        table.expires = expires
    try:
        client.create_table(table)
    except Conflict:
        pass


class _PrepareTables(beam.DoFn):
    """Once: tables, new columns and this run's staging tables; outputs
    ``{event_type: {"table", "staging", "schema"}}`` for the writes."""

    def __init__(self, project: str, dataset: str, endpoint: str | None, run_id: str):
        self._project, self._dataset = project, dataset
        self._endpoint, self._run_id = endpoint, run_id

    def display_data(self) -> dict:
        """The generated schemas, shown on this step in the job graph (Dataflow's UI)."""
        shown = {"dataset": f"{self._project}:{self._dataset}",
                 "partitioning": json.dumps(tables()["time_partitioning"]),
                 "clustering": ",".join(tables()["clustering"])}
        for spec in tables()["event_types"].values():
            shown[f"schema.{spec['table']}"] = json.dumps(
                [{k: c[k] for k in ("name", "type", "mode")} for c in spec["columns"]])
        return shown

    def process(self, _: Any, extras: dict) -> Iterator[dict]:
        from google.api_core.exceptions import NotFound
        client = bigquery_client(self._project, self._endpoint)
        client.create_dataset(f"{self._project}.{self._dataset}", exists_ok=True)
        prefix = f"{self._project}.{self._dataset}"
        dead = tables()["dead_letter"]
        _create_table(client, f"{prefix}.{dead['table']}", dead["columns"], False)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            hours=STAGING_HOURS)
        out = {}
        for event_type in sorted(extras):
            table = table_of(event_type)
            columns = columns_for(event_type, extras)
            try:
                _ensure_columns(client, f"{prefix}.{table}", columns)
            except NotFound:
                _create_table(client, f"{prefix}.{table}", columns, True)
            # the staging table takes the table's own types: a value that does not fit
            # its column is rejected row by row by the write, not by the MERGE
            columns = [{"name": f.name, "type": f.field_type, "mode": f.mode}
                       for f in client.get_table(f"{prefix}.{table}").schema]
            staging = staging_name(table, self._run_id)
            client.delete_table(f"{prefix}.{staging}", not_found_ok=True)
            _create_table(client, f"{prefix}.{staging}", columns, False, expires)
            out[event_type] = {"table": table, "staging": staging,
                               "schema": {"fields": [
                                   {k: c[k] for k in ("name", "type", "mode")}
                                   for c in columns]},
                               "json": [c["name"] for c in columns if c["type"] == "JSON"],
                               # JSON columns whose values are JSON text (`properties`);
                               # the others (new fields of several kinds) hold values
                               "json_text": [c["name"] for c in known_columns(event_type)
                                             if c["type"] == "JSON"]}
        yield out


def _text_row(event: dict, spec: dict) -> dict:
    """An event as a BigQuery row with JSON columns as JSON text and ``event_timestamp``
    (from ``time``) as text: what streaming inserts send, and what the check reads."""
    row = {}
    for key, value in event.items():
        if key in spec["json"] and value is not None and not (
                key in spec["json_text"] and isinstance(value, str)):
            value = codec.dumps(value).decode()
        row[key] = value
    t = event.get("time")
    if isinstance(t, int) and not isinstance(t, bool):
        row[warehouse.TIMESTAMP_COLUMN] = datetime.datetime.fromtimestamp(
            t, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return row


def _load_row(row: dict, spec: dict) -> dict:
    """A checked text row as a load file wants it: JSON columns as JSON values."""
    return {k: codec.loads(v) if k in spec["json"] and isinstance(v, str) else v
            for k, v in row.items()}


class _ToRows(beam.DoFn):
    """ShardLines -> one BigQuery row (dict) per event, in the form the method takes
    (``load``: JSON columns as values, for load files; ``text``: as JSON text, for
    streaming inserts and the Storage Write API).

    With ``check`` (load jobs, the Storage Write API), a row BigQuery would refuse for
    the table's live columns goes to the ``REJECTED`` output as (staging table, row,
    BigQuery-shaped errors), as Beam returns a refused streaming insert; see
    ``transforms.bigquery_rows``."""

    def __init__(self, form: str, check: bool, project: str, dataset: str):
        self._form, self._check = form, check
        self._project, self._dataset = project, dataset

    def start_bundle(self):
        self._columns: dict[str, Any] = {}  # event type -> its table's Columns

    def process(self, element: ShardLines, prepared: dict) -> Iterator:
        _, lines = element
        for line in lines:
            event = codec.loads(line)
            spec = prepared[event["event_type"]]
            row = _text_row(event, spec)
            if self._check:
                columns = self._columns.get(event["event_type"])
                if columns is None:
                    columns = self._columns[event["event_type"]] = columns_of(
                        spec["schema"]["fields"])
                errors = check_row(row, columns, json_as_text=True,
                                   limit="load" if self._form == "load" else "storage")
                if errors:
                    yield beam.pvalue.TaggedOutput(REJECTED, (
                        f"{self._project}:{self._dataset}.{spec['staging']}", row, errors))
                    continue
            yield _load_row(row, spec) if self._form == "load" else row


def _quote(name: str) -> str:
    return f"`{name}`"


class _MergeRuns(beam.DoFn):
    """Once, after every write: wait for the load jobs, MERGE each staging table into its
    table on (event_type, id), drop the staging tables; outputs the counters."""

    def __init__(self, project: str, dataset: str, endpoint: str | None):
        self._project, self._dataset, self._endpoint = project, dataset, endpoint
        self._written = Metrics.counter("currents", "bigquery_rows_written")

    def process(self, _: Any, prepared: dict, load_jobs: list, rejected: list) -> Iterator[dict]:
        client = bigquery_client(self._project, self._endpoint)
        for _, job in load_jobs:  # file loads (and copies from Beam's temporary tables,
            # for big loads): Beam started them; wait until each is done
            job_id = getattr(job, "jobId", None) or str(job)
            client.get_job(job_id, location=getattr(job, "location", None)).result()
        prefix = f"{self._project}.{self._dataset}"
        written = 0
        for event_type, spec in sorted(prepared.items()):
            target, staging = f"{prefix}.{spec['table']}", f"{prefix}.{spec['staging']}"
            bounds = list(client.query(
                f"SELECT MIN({warehouse.TIMESTAMP_COLUMN}) AS lo, "
                f"MAX({warehouse.TIMESTAMP_COLUMN}) AS hi, COUNT(*) AS n, "
                f"COUNT({warehouse.TIMESTAMP_COLUMN}) AS timed "
                f"FROM `{staging}`").result())[0]
            if bounds["n"]:
                names = [f["name"] for f in spec["schema"]["fields"]]
                cols = ", ".join(map(_quote, names))
                values = ", ".join(f"S.{_quote(n)}" for n in names)
                prune = ""
                # only the partitions this run touches (all of them if some event of
                # a type outside the catalogue has no `time`)
                if bounds["lo"] is not None and bounds["timed"] == bounds["n"]:
                    prune = (f" AND T.{warehouse.TIMESTAMP_COLUMN} BETWEEN "
                             f"TIMESTAMP '{bounds['lo'].isoformat()}' AND "
                             f"TIMESTAMP '{bounds['hi'].isoformat()}'")
                # one row per (event_type, id) from the staging table: a write that
                # is at least once (a retried bundle, the Storage Write API's default
                # stream) may have put a row there twice
                job = client.query(
                    f"MERGE `{target}` T USING (SELECT * FROM `{staging}` WHERE TRUE "
                    f"QUALIFY ROW_NUMBER() OVER (PARTITION BY event_type, id) = 1) S "
                    f"ON T.event_type = S.event_type AND T.id = S.id{prune} "
                    f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")
                job.result()
                written += job.num_dml_affected_rows or 0
            client.delete_table(staging, not_found_ok=True)
        self._written.inc(written)
        yield {"bigquery/tables": len(prepared), "bigquery/rows_written": written,
               "bigquery/rows_rejected": len(rejected)}


def _dead_letter(failed: tuple) -> dict:
    destination, row, errors = failed
    return {"reason": REJECTED, "event_type": row.get("event_type"),
            "source": str(destination), "row": None,
            "error": json.dumps(errors, sort_keys=True, default=str), "record": row}


class _WriteDeadLetter(beam.DoFn):
    """Once: rejected rows into the dead-letter table and ``dead_letter/``; outputs the
    relative path of the file (for the commit), if any."""

    def __init__(self, project: str, dataset: str, endpoint: str | None, temp_dir: str):
        self._project, self._dataset = project, dataset
        self._endpoint, self._temp_dir = endpoint, temp_dir
        self._rejected = Metrics.counter("currents", "bigquery_rows_rejected")

    def process(self, _: Any, rejected: list) -> Iterator[str]:
        if not rejected:
            return
        from apache_beam.io.filesystems import FileSystems
        records = sorted((_dead_letter(f) for f in rejected),
                         key=lambda d: (d["event_type"] or "", str(d["record"].get("id"))))
        self._rejected.inc(len(records))
        client = bigquery_client(self._project, self._endpoint)
        table = f"{self._project}.{self._dataset}.{tables()['dead_letter']['table']}"
        rows = [{**d, "record": codec.dumps(d["record"]).decode()} for d in records]
        for start in range(0, len(rows), 500):
            errors = client.insert_rows_json(table, rows[start:start + 500])
            if errors:
                raise RuntimeError(f"the dead-letter table {table} refused rows: {errors}")
        relative = "dead_letter/part-bigquery-rejected.ndjson"
        with create_ndjson(FileSystems.join(self._temp_dir, relative)) as fo:
            fo.write(b"".join(codec.dumps(d) + b"\n" for d in records))
        yield relative


def expansion_service_jar() -> str:
    """The jar Beam starts as its Java expansion service (for this Beam version: a Maven
    Central URL, or a path when Beam's jar replacements name one)."""
    from apache_beam.utils.subprocess_server import JavaJarServer
    return JavaJarServer.path_to_beam_jar(EXPANSION_SERVICE_TARGET)


def java_path() -> str | None:
    """The Java Beam would start the jar with ($JAVA_HOME/bin/java, else java on PATH)."""
    home = os.environ.get("JAVA_HOME")
    return shutil.which(os.path.join(home, "bin", "java") if home else "java")


def _local_jar() -> bool:
    """Beam could start its expansion service here without a download."""
    from apache_beam.utils.subprocess_server import JavaJarServer
    jar = expansion_service_jar()
    return java_path() is not None and (os.path.exists(jar) or os.path.exists(
        os.path.join(JavaJarServer.JAR_CACHE, os.path.basename(jar))))


def storage_write_api_missing(expansion_service: str | None,
                              dry_run: bool = False) -> str | None:
    """What ``--bigquery-method storage_write_api`` lacks here, as one sentence, or None.

    Beam expands that write through its Java expansion service while it builds the
    pipeline: a running one (``expansion_service``, HOST:PORT) must answer, or Beam
    starts its jar with Java (downloading the jar once into its cache). Checked before
    the run so a missing piece is one line (exit 2), not a stack trace from inside Beam.
    A dry run without them is built with the writes not expanded (docs/bigquery.md)."""
    if expansion_service:
        host, _, port = expansion_service.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as exc:
            return (f"--bigquery-expansion-service {expansion_service}: nothing answers "
                    f"there ({exc}); --bigquery-method storage_write_api needs Beam's Java "
                    "expansion service running at that address")
        return None
    if dry_run:
        return None
    if java_path() is None:
        return ("--bigquery-method storage_write_api needs Beam's Java expansion service, "
                "and there is no Java to start it ($JAVA_HOME/bin/java or java on PATH): "
                "install a Java runtime (11+) or pass --bigquery-expansion-service "
                "HOST:PORT of a running one")
    from apache_beam.utils.subprocess_server import JavaJarServer
    jar = expansion_service_jar()
    try:
        JavaJarServer.local_jar(jar)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return (f"--bigquery-method storage_write_api needs Beam's Java expansion service "
                f"jar {os.path.basename(jar)}: not in {JavaJarServer.JAR_CACHE} and it "
                f"could not be downloaded ({reason}); put the jar there or pass "
                "--bigquery-expansion-service HOST:PORT of a running expansion service")
    return None


class _ToBeamTypes(beam.DoFn):
    """Checked text rows as Beam's Storage Write API takes them: ``event_timestamp`` a
    Beam Timestamp (its TIMESTAMP type), JSON columns as text. Carries the write's
    configuration as display data: a DoFn's, unlike a composite's, stays in the job
    graph Dataflow gets."""

    def __init__(self, shown: dict):
        self._shown = shown

    def display_data(self) -> dict:
        return self._shown

    def process(self, row: dict) -> Iterator[dict]:
        from apache_beam.utils.timestamp import Timestamp
        out = dict(row)
        if isinstance(row.get("time"), int) and not isinstance(row["time"], bool):
            out[warehouse.TIMESTAMP_COLUMN] = Timestamp(seconds=row["time"])
        yield out


def _plain(value: Any) -> Any:
    if hasattr(value, "to_rfc3339"):  # Beam Timestamp
        return value.to_rfc3339()
    if hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalar
        return value.item()
    return value


def _storage_failure(failed: dict, table: str) -> tuple:
    """Beam's failed Storage Write API row -> (table, row, errors) like the others."""
    row = {k: _plain(v) for k, v in dict(failed["failed_row"]).items()}
    return table, row, [error(None, str(failed["error_message"]))]


class _StorageWrite(beam.PTransform):
    """Rows of one event type -> Beam's ``WriteToBigQuery(method=STORAGE_WRITE_API)``
    into the type's staging table, with its generated schema: static, since Beam's
    Python Storage Write API takes no schema per destination. At-least-once (the
    default stream): rows are committed as appended, so they are all in the staging
    table once the write's failed rows are complete, which ``MergeRuns`` waits for; the
    MERGE keeps one row per (event_type, id). Returns the refused rows as (table, row,
    errors). ``expand_java`` False (a dry run with no expansion service here): the Java
    write is not expanded, its configuration is still shown in the graph."""

    def __init__(self, table: str, schema: dict, expansion_service: str | None,
                 expand_java: bool):
        super().__init__()
        self._table, self._schema = table, schema
        self._service, self._expand_java = expansion_service, expand_java

    def configuration(self) -> dict:
        """The write's configuration, shown in the job graph (on ``ToBeamTypes``)."""
        service = (f"{self._service} (--bigquery-expansion-service)" if self._service
                   else f"Beam's jar {expansion_service_jar()} started with Java "
                        f"({java_path() or 'not found'})")
        return {"table": self._table, "method": "STORAGE_WRITE_API",
                "schema": json.dumps(self._schema["fields"]),
                "semantics": "at_least_once (default stream; MergeRuns keeps one row per "
                             "event_type, id)",
                "triggering_frequency": "none (batch: rows are appended as they come)",
                "create_disposition": "CREATE_NEVER (PrepareTables made the table)",
                "expansion_service": service,
                "expanded": ("yes" if self._expand_java else
                             "no: dry run without an expansion service here")}

    def expand(self, rows):
        typed = rows | "ToBeamTypes" >> beam.ParDo(_ToBeamTypes(self.configuration()))
        if not self._expand_java:
            return typed | "JavaWriteNotExpanded" >> beam.FlatMap(lambda row: ())
        result = (typed | "WriteToBigQuery" >> WriteToBigQuery(
                      table=self._table, schema=self._schema,
                      method=WriteToBigQuery.Method.STORAGE_WRITE_API,
                      create_disposition=BigQueryDisposition.CREATE_NEVER,
                      write_disposition=BigQueryDisposition.WRITE_APPEND,
                      use_at_least_once=True, expansion_service=self._service,
                      type_overrides={"JSON": str}))
        return result.failed_rows_with_errors | "AsRejected" >> beam.Map(
            _storage_failure, self._table)


@beam.typehints.with_input_types(ShardLines)
class WriteToWarehouse(beam.PTransform):
    """ShardLines of clean events -> BigQuery tables of ``dataset`` (``PROJECT:DATASET``).

    ``method``: file_loads | streaming_inserts | storage_write_api. ``endpoint``: a
    BigQuery-compatible URL instead of Google's. ``run_id`` names the staging tables;
    ``temp_dir`` is where the dead-letter file goes (committed with the other outputs).
    ``columns``: the ``ObserveColumns`` output if already made. File loads stage their
    files under the pipeline's ``--temp_location`` (gs://). ``expansion_service``:
    HOST:PORT of Beam's Java expansion service for storage_write_api (default: Beam
    starts its jar). Returns ``{"stats": one counters dict (after the MERGE),
    "dead_letter": the dead-letter file's path relative to temp_dir, if any rows were
    rejected}``.
    """

    def __init__(self, dataset: str, method: str = "file_loads", endpoint: str | None = None,
                 run_id: str = "run", temp_dir: str = "", columns=None,
                 expansion_service: str | None = None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown BigQuery method {method!r}; choose from "
                             f"{', '.join(METHODS)}")
        self._project, self._dataset = parse_dataset(dataset)
        self._method, self._endpoint = method, endpoint
        self._run_id, self._temp_dir, self._columns = run_id, temp_dir, columns
        self._expansion_service = expansion_service

    def _storage_writes(self, rows):
        """storage_write_api: one static write per catalogue type for the rows that fit
        its generated schema; returns (their refused rows, the rest: rows with new
        fields or of types outside the catalogue, for a write with a schema per
        table)."""
        from apache_beam.options.pipeline_options import TestOptions
        types = sorted(tables()["event_types"])
        index = {t: i for i, t in enumerate(types)}
        known = {t: {c["name"] for c in tables()["event_types"][t]["columns"]} for t in types}

        def route(row: dict, _: int) -> int:
            i = index.get(row["event_type"])
            return i if i is not None and row.keys() <= known[row["event_type"]] else len(types)

        parts = rows | "BySchema" >> beam.Partition(route, len(types) + 1)
        dry_run = rows.pipeline.options.view_as(TestOptions).dry_run
        expand_java = bool(self._expansion_service) or not dry_run or _local_jar()
        refused = []
        for i, event_type in enumerate(types):
            spec = tables()["event_types"][event_type]
            schema = {"fields": [{k: c[k] for k in ("name", "type", "mode")}
                                 for c in spec["columns"]]}
            table = (f"{self._project}:{self._dataset}."
                     f"{staging_name(spec['table'], self._run_id)}")
            refused.append(parts[i] | f"StorageWriteApi[{spec['table']}]" >> _StorageWrite(
                table, schema, self._expansion_service, expand_java))
        return refused, parts[len(types)]

    def expand(self, events):
        p = events.pipeline
        project, dataset, endpoint = self._project, self._dataset, self._endpoint
        columns = self._columns or events | "ObserveColumns" >> ObserveColumns()
        prepared = (p | "Start" >> beam.Create([None])
                    | "PrepareTables" >> beam.ParDo(
                        _PrepareTables(project, dataset, endpoint, self._run_id),
                        extras=beam.pvalue.AsSingleton(columns)))
        ready = beam.pvalue.AsSingleton(prepared)
        checked = events | "ToRows" >> beam.ParDo(
            _ToRows("load" if self._method == "file_loads" else "text",
                    self._method != "streaming_inserts", project, dataset),
            prepared=ready).with_outputs(REJECTED, main="rows")
        rows, rejected = checked.rows, [checked[REJECTED]]
        method, label = self._method, "WriteToBigQuery"
        if method == "storage_write_api":
            refused, rows = self._storage_writes(rows)
            rejected += refused
            method, label = "streaming_inserts", "NewFieldsByStreamingInserts"

        def staging_table(row, prepared):
            return f"{project}:{dataset}.{prepared[row['event_type']]['staging']}"

        def staging_schema(destination, prepared):
            name = str(destination).rsplit(".", 1)[-1]
            return next(s["schema"] for s in prepared.values() if s["staging"] == name)

        options = {}
        if method == "streaming_inserts":
            options["insert_retry_strategy"] = RetryStrategy.RETRY_NEVER
        result = rows | label >> WriteToBigQuery(
            table=staging_table, schema=staging_schema,
            table_side_inputs=(ready,), schema_side_inputs=(ready,),
            create_disposition=BigQueryDisposition.CREATE_NEVER,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            method=METHODS[method],
            test_client=EndpointClient(project, endpoint) if endpoint else None,
            **options)
        if method == "file_loads":
            load_jobs = (result.destination_load_jobid_pairs,
                         result.destination_copy_jobid_pairs) | "AllJobs" >> beam.Flatten()
        else:
            load_jobs = p | "NoLoadJobs" >> beam.Create([])
            rejected.append(result.failed_rows_with_errors)
        rejected_list = beam.pvalue.AsList(rejected | "AllRejected" >> beam.Flatten())
        stats = (p | "Once" >> beam.Create([None])
                 | "MergeRuns" >> beam.ParDo(_MergeRuns(project, dataset, endpoint),
                                             prepared=ready,
                                             load_jobs=beam.pvalue.AsList(load_jobs),
                                             rejected=rejected_list))
        dead = (p | "Rejected" >> beam.Create([None])
                | "WriteDeadLetter" >> beam.ParDo(
                    _WriteDeadLetter(project, dataset, endpoint, self._temp_dir),
                    rejected=rejected_list))
        return {"stats": stats, "dead_letter": dead}
