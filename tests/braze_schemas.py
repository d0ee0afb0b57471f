"""Writer schemas as Braze writes them today, for event types the seeds do not document.

Field names and Avro types of Braze's current public Currents glossaries (Message
engagement and Customer behavior events, braze.com/docs/user_guide/data/braze_currents/
event_glossary/) and of the sample files Braze publishes with them: ``id``,
``user_id`` and ``time`` plain, most other fields ``["null", T]``; a ``!`` marks the
other fields Braze declares non-null. Abridged to the fields the tests need; record
names as Braze's (``dataexport.S3.inner.<type>``).
"""
from __future__ import annotations

from typing import Any

from transforms.testing import avro_bytes

_NEWER = {
    "users.messages.rcs.Delivery": "app_group_id external_user_id id! time!:int user_id! "
        "campaign_id campaign_name canvas_id canvas_name canvas_step_name device_id "
        "dispatch_id message_variation_id send_id subscription_group_id to_phone_number! "
        "from_rcs_sender",
    "users.messages.rcs.InboundReceive": "app_group_id external_user_id id! time!:int user_id "
        "action! campaign_id media_urls:array<string?> message_body! user_phone_number! "
        "to_rcs_sender! subscription_group_id",
    "users.messages.line.Send": "app_group_id external_user_id id! time!:int user_id! "
        "campaign_id campaign_name canvas_id device_id dispatch_id line_channel_id! "
        "line_channel_name! message_extras message_variation_id native_line_id! send_id "
        "subscription_group_id timezone",
    "users.messages.sms.Retry": "app_group_id external_user_id id! time!:int user_id! "
        "campaign_id message_variation_id canvas_id subscription_group_id retry_type "
        "retry_log campaign_name",
    "users.messages.email.Retry": "app_group_id external_user_id id! time!:int user_id! "
        "retry_type retry_log send_id dispatch_id campaign_id email_address! ip_pool "
        "campaign_name device_id",
    "users.messages.banner.Dismiss": "app_group_id external_user_id id! time!:int user_id! "
        "app_id campaign_id message_variation_id device_id platform os_version "
        "device_model button_id banner_placement_id campaign_name ad_id ad_id_type "
        "ad_tracking_enabled:boolean",
    "users.canvas.costep.Send": "app_group_id external_user_id id! time!:int user_id! "
        "dispatch_id channel canvas_variation_id content_optimizer_step_id! "
        "combination_token!",
    "users.behaviors.pushnotification.TokenStateChange": "id! time!:int app_id "
        "time_ms:long user_id! platform push_token sdk_version app_group_id external_user_id "
        "push_token_device_id push_token_state_change_type",
    "users.behaviors.liveactivity.UpdateTokenChange": "id! user_id! external_user_id "
        "time!:int activity_id update_token device_id sdk_version "
        "push_token_state_change_type app_group_id app_id",
    "users.profile.Update": "app_group_id external_user_id id! time!:int time_ms!:long "
        "user_id! app_id update_source! first_name last_name email_address phone_number",
    "users.UserOrphan": "id! user_id! external_user_id device_id app_group_id app_id "
        "time!:int orphaned_by_id!",
    "users.UserDeleteRequest": "id! user_id! app_group_id time!:int",
    "agentconsole.AgentExecuted": "id! invocation_id! time!:long agent_id! agent_name! "
        "user_id external_user_id input output",
}
_KINDS = {"string": "string", "int": "int", "long": "long", "boolean": "boolean",
          "float": "float", "array<string>": {"type": "array", "items": "string"},
          "array<string?>": {"type": "array", "items": ["null", "string"]}}

NEWER_TYPES = tuple(_NEWER)


def newer_schema(event_type: str) -> dict[str, Any]:
    """The writer schema of a newer type (see the module docstring)."""
    fields = []
    for spec in _NEWER[event_type].split():
        name, _, kind = spec.partition(":")
        required = name.endswith("!")
        name = name.rstrip("!")
        avro = _KINDS[kind or "string"]
        fields.append({"name": name, "type": avro} if required
                      else {"name": name, "type": ["null", avro], "default": None})
    namespace, _, name = f"dataexport.S3.inner.{event_type}".rpartition(".")
    return {"type": "record", "name": name, "namespace": namespace, "fields": fields}


def newer_record(event_type: str, n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A row of a newer type with every field set (ids from ``n``)."""
    row: dict[str, Any] = {}
    for field in newer_schema(event_type)["fields"]:
        kind = field["type"] if isinstance(field["type"], (str, dict)) else field["type"][1]
        name = field["name"]
        if name == "time":
            row[name] = 1_795_507_200 + n
        elif kind in ("int", "long"):
            row[name] = 1_795_507_200_000 + n
        elif kind == "boolean":
            row[name] = False
        elif isinstance(kind, dict):
            row[name] = [f"https://example.com/{name}/{n}.png"]
        elif name == "id":
            row[name] = f"{event_type}-{n}"
        elif name == "user_id":
            row[name] = f"braze-{n}"
        elif name == "external_user_id":
            row[name] = f"user-{n:05d}"
        elif "phone" in name:
            row[name] = f"+1415555{n:04d}"
        else:
            row[name] = f"{name}-{n}"
    row.update(overrides)
    return row


def write_newer(path, event_type: str, rows: list[dict]) -> None:
    """One Avro file of a newer type, at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(avro_bytes(newer_schema(event_type), rows))
