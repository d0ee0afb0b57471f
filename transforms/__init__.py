"""Composable Beam transforms for Braze Currents exports.

    ReadCurrentsExport -> ValidateEvents -> DeduplicateEvents -> ResolveIdentityMap
        -> ApplyPii -> FormatForPartners

(``FormatForPartners`` = ``ResolveIdentities`` then ``FormatForPartner`` per partner,
in one pass. ``transforms.bigquery.WriteToWarehouse`` and ``transforms.parquet`` write
the events to BigQuery and Parquet.)

Each is a composite ``PTransform`` with Beam type hints (misuse fails when the pipeline is
built); its docstring gives its input and output element types (``transforms.types``),
its tagged outputs and its options. Elements are batches, because Beam pays per
element: ``ParseEvents`` and ``ToRowBatches`` convert to and from one dict per event for
steps of your own. ``transforms.testing`` has helpers for your tests. ``DeliverToPartner``
sends a partner's payloads to its ingestion API (docs/delivery.md).
"""
from transforms.batches import ParseEvents, ToRowBatches
from transforms.dedup import DeduplicateEvents
from transforms.deliver import DeliverToPartner, DeliveryConfig
from transforms.fanout import FormatForPartners
from transforms.identities import ResolveIdentities, resolve_identity
from transforms.identity_map import ResolveIdentityMap
from transforms.partners import FormatForPartner, PartnerFormatter, explain_mapping
from transforms.pii import ApplyPii
from transforms.read import ReadCurrentsExport
from transforms.sinks import WriteShards
from transforms.summary import StatsToMetrics
from transforms.validate import ValidateEvents

__all__ = [
    "ReadCurrentsExport", "ValidateEvents", "DeduplicateEvents", "ResolveIdentityMap",
    "ApplyPii", "ResolveIdentities",
    "FormatForPartner", "FormatForPartners", "ParseEvents", "ToRowBatches", "WriteShards",
    "resolve_identity", "PartnerFormatter", "explain_mapping",
    "DeliverToPartner", "DeliveryConfig", "StatsToMetrics",
]
