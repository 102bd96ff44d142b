"""The sales endpoints are documented: response models with examples, and every error."""

from __future__ import annotations

from pydantic import BaseModel

from leadstage.settings import ApiSettings
from leadstage_api import sales_schemas
from leadstage_api.app import create_app


def test_sales_endpoints_document_their_models_examples_and_errors() -> None:
    schema = create_app(ApiSettings()).openapi()
    paths = schema["paths"]
    writes = {
        "/v1/quotas/{owner_kind}/{owner_id}/{period}": "QuotaVersion",
        "/v1/spend/{period}/{channel}": "SpendVersion",
        "/v1/forecasts/{deal_id}": "ForecastVersion",
    }
    for path, model in writes.items():
        put = paths[path]["put"]
        assert put["description"]
        assert {"200", "201", "400", "401", "403", "422"} <= set(put["responses"])
        assert put["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
            model
        )
        assert schema["components"]["schemas"][model]["examples"]
        get = paths[path]["get"]
        assert {"200", "401", "403", "404", "422"} <= set(get["responses"])
        assert {"200", "404"} <= set(paths[f"{path}/history"]["get"]["responses"])
    metrics = paths["/v1/metrics/sales"]["get"]
    assert {"200", "401", "403", "404", "422"} <= set(metrics["responses"])
    assert "null with a reason" in metrics["description"]
    sales = schema["components"]["schemas"]["SalesMetrics"]
    assert "from" in sales["properties"]
    assert sales["examples"][0]["periods"][0]["figures"]["romi"]["reason"]
    parameters = {p["name"] for p in metrics["parameters"]}
    assert {"from", "to", "period", "owner", "channel", "source", "industry", "breakdown"} <= (
        parameters
    )


def test_the_documented_examples_are_valid_instances() -> None:
    models: list[type[BaseModel]] = [
        sales_schemas.QuotaIn,
        sales_schemas.SpendIn,
        sales_schemas.ForecastIn,
        sales_schemas.QuotaVersion,
        sales_schemas.SpendVersion,
        sales_schemas.ForecastVersion,
        sales_schemas.SalesMetrics,
    ]
    for model in models:
        examples = model.model_json_schema()["examples"]
        for example in examples:
            model.model_validate(example)
