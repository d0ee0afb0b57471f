"""Composable Beam transforms for Braze Currents exports.

    ReadCurrentsExport -> ValidateEvents -> DeduplicateEvents -> ResolveIdentities
        -> FormatForPartner (one per partner)

Each is a composite ``PTransform``; see its docstring for element types and outputs.
"""
from transforms.dedup import DeduplicateEvents
from transforms.identities import ResolveIdentities, resolve_identity
from transforms.partners import FormatForPartner, PartnerFormatter
from transforms.read import ReadCurrentsExport
from transforms.validate import ValidateEvents

__all__ = ["ReadCurrentsExport", "ValidateEvents", "DeduplicateEvents", "ResolveIdentities",
           "resolve_identity", "FormatForPartner", "PartnerFormatter"]
