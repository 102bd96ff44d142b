"""The OpenAPI documents describe the endpoints with examples and the error envelope."""

from __future__ import annotations

import json

from leadstage.settings import ApiSettings, IngestSettings
from leadstage_api.app import create_app as create_api
from leadstage_ingest.app import create_app as create_ingest


def test_ingest_documents_the_touchpoint_schema_with_an_example() -> None:
    schema = create_ingest(IngestSettings()).openapi()
    post = schema["paths"]["/v1/events"]["post"]
    assert {"202", "400", "401", "413", "422", "503"} <= set(post["responses"])
    touchpoint = schema["components"]["schemas"]["TouchpointIn"]
    assert touchpoint["examples"][0]["type"] == "demo_requested"
    assert "occurred_at" in touchpoint["required"]
    assert "ErrorEnvelope" in json.dumps(post["responses"]["422"])


def test_metrics_api_documents_the_lead_view_with_an_example() -> None:
    schema = create_api(ApiSettings()).openapi()
    get = schema["paths"]["/v1/leads/{lead_id}"]["get"]
    assert {"200", "401", "403", "404", "422"} <= set(get["responses"])
    lead = schema["components"]["schemas"]["LeadView"]
    assert lead["examples"][0]["stage"] == "Action"
    assert any(
        s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values()
    )


def test_metrics_api_documents_the_account_view_with_an_example() -> None:
    schema = create_api(ApiSettings()).openapi()
    get = schema["paths"]["/v1/accounts/{account_id}"]["get"]
    assert {"200", "401", "403", "404", "422"} <= set(get["responses"])
    assert get["description"]
    account = schema["components"]["schemas"]["AccountView"]
    assert account["examples"][0]["funnels"][0]["account_rule"]["kind"] == "quorum"
