"""The database part: one credentials Secret with a URL per role, the volume's size and class from the spec."""

from __future__ import annotations

import base64
import dataclasses

from iotenant.render import database
from iotenant.vocabulary import tenant_database
from stacks import fixture_stack


def test_each_role_gets_its_own_url_and_the_volume_follows_the_spec() -> None:
    stack = fixture_stack("starter")
    stack = dataclasses.replace(stack, spec={**stack.spec, "database": {"storage": "20Gi"}}, storage_classes={"database": "fast"})
    objects = {o["kind"]: o for o in database.database(stack)}
    values = {key: base64.b64decode(value).decode() for key, value in objects["Secret"]["data"].items()}
    assert values["ingest-url"] == f"postgresql://{tenant_database.INGEST_ROLE}:db-ingest-pw@database.customer-acme.svc:5432/iotenant"
    assert values["api-url"].startswith(f"postgresql://{tenant_database.API_ROLE}:db-api-pw@")
    assert values["username"] == tenant_database.SUPERUSER
    (claim,) = objects["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi" and claim["spec"]["storageClassName"] == "fast"
