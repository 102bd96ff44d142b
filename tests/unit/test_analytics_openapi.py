"""Every analytics endpoint is documented: description, response model with an example,
the error envelope, and the shared segment parameters."""

from __future__ import annotations

import json

from leadstage.settings import ApiSettings
from leadstage_api.app import create_app

REPORTS = {
    "/v1/funnels/{funnel}/cohorts": "CohortReport",
    "/v1/funnels/{funnel}/time-in-stage": "TimeInStageReport",
    "/v1/funnels/{funnel}/time-to-convert": "TimeToConvertReport",
    "/v1/funnels/{funnel}/transitions": "TransitionsReport",
    "/v1/funnels/{funnel}/attribution": "AttributionReport",
}


def test_analytics_endpoints_have_descriptions_examples_and_errors() -> None:
    schema = create_app(ApiSettings()).openapi()
    for path, model in REPORTS.items():
        get = schema["paths"][path]["get"]
        assert len(get["description"]) > 100, path
        assert {"200", "401", "403", "404", "422"} <= set(get["responses"]), path
        assert model in json.dumps(get["responses"]["200"]), path
        assert "ErrorEnvelope" in json.dumps(get["responses"]["404"]), path
        parameters = {p["name"] for p in get["parameters"]}
        assert {"from", "to", "industry", "channel", "breakdown", "unit"} <= parameters, path
        example = schema["components"]["schemas"][model]["examples"][0]
        assert example["funnel"] == "b2b-six-stage", path
        assert "from" in schema["components"]["schemas"][model]["properties"], path
    summary = schema["paths"]["/v1/funnels/{funnel}/summary"]["get"]
    assert {"breakdown", "unit", "tier"} <= {p["name"] for p in summary["parameters"]}
