"""The API's contract: /openapi.json is a valid OpenAPI 3.1 document that states every rule, and the real API
(with ingest, Mosquitto and PostgreSQL under an enterprise licence) answers exactly what it says."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate

from dataplane import TOKEN, Stack

SHA = "ab" * 32
# Cases the fuzzer generates per operation and phase: enough to find what the document and the API disagree on,
# bounded so the suite stays in minutes.
FUZZ_CASES_PER_OPERATION = 100


@pytest.fixture
def enterprise(api_stack: Callable[..., Stack]) -> Stack:
    return api_stack("enterprise")


class Contract:
    """Requests to the API, each answer checked against what the document says of its operation."""

    def __init__(self, stack: Stack) -> None:
        self.api = stack.api
        status, self.document = self.api.request("GET", "/openapi.json")
        assert status == 200
        self.used: set[str] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, operations in self.document["paths"].items():
            if re.fullmatch(re.sub(r"\{[a-z_]+\}", "[^/]+", template), path.split("?")[0]) and method.lower() in operations:
                return template, operations[method.lower()]
        raise AssertionError(f"{method} {path}: no such operation in the document")

    def call(self, method: str, path: str, expected: int, body: Any = None) -> Any:
        _template, operation = self.operation(method, path)
        self.used.add(operation["operationId"])
        status, answer = self.api.request(method, path, token=TOKEN, body=body)
        assert status == expected, f"{method} {path}: {status} {answer}"
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method} {path}: status {status} is not in the document"
        if "content" in documented:
            # The document's components beside the schema, so that its references resolve.
            schema = {"allOf": [documented["content"]["application/json"]["schema"]], "components": self.document["components"]}
            errors = sorted(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(answer), key=str)
            assert not errors, f"{method} {path}: the answer breaks the document: {errors[0].message} at {list(errors[0].path)}"
        else:
            assert answer is None, f"{method} {path}: the document says no body"
        return answer


def test_the_document_is_valid_openapi_and_states_every_rule(enterprise: Stack) -> None:
    document = Contract(enterprise).document
    validate(document)
    assert document["openapi"].startswith("3.1")
    operation_ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                assert schema.get("type") or schema.get("enum"), f"{method} {path} {parameter['name']}: untyped"
                assert set(schema) & {"pattern", "enum", "minimum", "maxLength", "format", "anyOf"}, f"{method} {path} {parameter['name']}: no rule"
                assert "pattern" not in schema or (schema["pattern"].startswith("^") and schema["pattern"].endswith("$")), \
                    f"{parameter['name']}: an unanchored pattern matches anywhere"
            for status, response in operation["responses"].items():
                assert status == "204" or status == "202" or "content" in response, f"{method} {path} {status}: no schema"
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert len(operation_ids) == len(set(operation_ids)) == 16


def test_every_answer_is_what_the_document_says(enterprise: Stack) -> None:
    contract = Contract(enterprise)
    call = contract.call
    call("GET", "/api/v1/devices", 200)
    call("GET", "/api/v1/devices/dev-001", 200)
    call("GET", "/api/v1/devices/ghost", 404)
    call("GET", "/api/v1/devices/dev-001/telemetry/last", 200)
    call("GET", "/api/v1/devices/dev-001/telemetry?type=m0&limit=5", 200)
    call("GET", "/api/v1/devices/dev-001/telemetry?from=yesterday", 422)
    call("GET", "/api/v1/devices/dev-001/telemetry?from=2101-01-01T00:00:00Z", 200)  # clamped: an empty range
    call("GET", "/api/v1/licence", 200)
    call("GET", "/api/v1/stats", 200)
    call("POST", "/api/v1/devices/dev-001/commands", 202, {"name": "reboot", "args": {"delay": 1}})
    call("GET", "/api/v1/devices/dev-001/commands", 200)
    rule = call("POST", "/api/v1/alert-rules", 201, {"name": "hot", "type": "m0", "operator": ">", "threshold": 1e9})
    call("POST", "/api/v1/alert-rules", 201, {"name": "quiet", "kind": "silence", "silenceSeconds": 60, "deviceId": "dev-002"})
    call("POST", "/api/v1/alert-rules", 422, {"name": "both", "type": "m0", "operator": ">", "threshold": 1, "silenceSeconds": 60})
    call("GET", "/api/v1/alert-rules", 200)
    call("GET", "/api/v1/alerts?state=firing", 200)
    call("POST", "/api/v1/alerts/999/acknowledge", 404)
    call("DELETE", f"/api/v1/alert-rules/{rule['id']}", 204)
    call("DELETE", f"/api/v1/alert-rules/{rule['id']}", 404)
    call("POST", "/api/v1/devices/dev-001/ota", 202, {"version": "1.2.4", "url": "https://firmware.invalid/1.2.4.bin", "sha256": SHA})
    call("POST", "/api/v1/devices/dev-001/ota", 409, {"version": "1.2.5", "url": "https://firmware.invalid/1.2.5.bin", "sha256": SHA})
    call("GET", "/api/v1/devices/dev-001/ota", 200)
    status, _headers, body = enterprise.api.download("/api/v1/export?format=ndjson&device=dev-001", TOKEN)
    assert status == 200 and body
    contract.used.add("exportTelemetry")
    assert contract.used == {operation["operationId"] for operations in contract.document["paths"].values()
                             for operation in operations.values()}, "every operation was exercised"


def raw(stack: Stack, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.api.port}{path}", data=body, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_protocol_details_a_client_relies_on(enterprise: Stack) -> None:
    status, headers, _ = raw(enterprise, "PUT", "/api/v1/devices")
    assert status == 405 and headers["Allow"] == "GET", headers
    rule = b'{"name": "hot", "type": "m0", "operator": ">", "threshold": 5}'
    status, _, body = raw(enterprise, "POST", "/api/v1/alert-rules", rule, {"Content-Type": "text/plain"})
    assert status == 415 and b"unsupported_media_type" in body
    status, headers, body = raw(enterprise, "POST", "/api/v1/alert-rules", rule, {"Content-Type": "application/json"})
    assert status == 201 and headers["Location"].startswith("/api/v1/alert-rules/"), headers
    status, headers, body = raw(enterprise, "DELETE", headers["Location"])
    assert status == 204 and body == b"" and "Content-Type" not in headers
    for cmd_id in (None, "", 0, "-leading-dash"):
        assert enterprise.api.request("POST", "/api/v1/devices/dev-001/commands", token=TOKEN,
                                      body={"name": "reboot", "cmd_id": cmd_id})[0] == 422, cmd_id


def test_a_malformed_request_is_one_log_line_and_a_count_and_the_next_request_is_served(enterprise: Stack) -> None:
    for attempt in range(3):
        with socket.create_connection(("127.0.0.1", enterprise.api.port), timeout=5) as connection:
            connection.sendall(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
            assert b" 400 " in connection.recv(100).split(b"\r\n")[0], attempt
    log = enterprise.api.log.read_text()
    assert log.count("malformed request refused") == 3 and "Traceback" not in log, log[-2000:]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{enterprise.api.metrics_port}/metrics", timeout=5).read().decode()
    assert "iotenant_api_malformed_requests_total 3.0" in metrics
    assert enterprise.api.request("GET", "/api/v1/devices", token=TOKEN)[0] == 200


def test_an_independent_fuzzer_finds_nothing(enterprise: Stack, tmp_path: Path) -> None:
    """Schemathesis, every check and every phase (the stateful one follows the document's links), a bounded
    number of cases per operation, against the real API: no server error, no answer the document does not
    state, no request the document allows refused, none it forbids accepted."""
    base = f"http://127.0.0.1:{enterprise.api.port}"
    fuzzer = Path(sys.executable).parent / "schemathesis"
    done = subprocess.run(
        [str(fuzzer), "run", f"{base}/openapi.json", "--url", base, "--checks", "all",
         "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(FUZZ_CASES_PER_OPERATION), "--seed", "20261207",
         "--workers", "1", "--header", f"Authorization: Bearer {TOKEN}", "--generation-database", "none", "--no-color",
         # The document's one rule JSON Schema cannot state: text is UTF-8 without NUL (what PostgreSQL stores).
         "--generation-codec", "utf-8", "--generation-allow-x00", "false",
         "--report", "ndjson", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-12000:]
    assert re.search(r"\b16 (selected|operations)", done.stdout) or "16 total" in done.stdout, done.stdout[-3000:]


def test_a_client_generated_from_the_document_works_with_typed_results(enterprise: Stack, tmp_path: Path) -> None:
    """openapi-python-client generates a client from /openapi.json; it lists devices, reads telemetry, makes and
    deletes an alert rule, and starts an OTA update and follows it, every answer a typed object."""
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(Contract(enterprise).document))
    config = tmp_path / "config.yaml"
    config.write_text("post_hooks: []\nproject_name_override: iotenant-api-client\npackage_name_override: iotenant_api_client\n")
    generator = Path(sys.executable).parent / "openapi-python-client"
    made = subprocess.run([str(generator), "generate", "--path", str(document), "--config", str(config),
                           "--output-path", str(tmp_path / "client")], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    sys.path.insert(0, str(tmp_path / "client"))
    try:
        from iotenant_api_client import AuthenticatedClient  # type: ignore[import-not-found]
        from iotenant_api_client.api.default import (  # type: ignore[import-not-found]
            create_alert_rule, delete_alert_rule, list_devices, list_ota_updates, list_telemetry, start_ota_update)
        from iotenant_api_client import models  # type: ignore[import-not-found]

        with AuthenticatedClient(base_url=f"http://127.0.0.1:{enterprise.api.port}", token=TOKEN) as client:
            devices = list_devices.sync(client=client)
            assert isinstance(devices, models.DeviceList) and "dev-001" in [device.id for device in devices.devices]
            telemetry = list_telemetry.sync("dev-001", client=client, type_="m0", limit=5)
            assert isinstance(telemetry, models.Telemetry) and len(telemetry.measurements) == 5
            assert all(isinstance(m, models.Measurement) and isinstance(m.ts, datetime) for m in telemetry.measurements)
            rule = create_alert_rule.sync(client=client, body=models.NewThresholdRule(
                name="hot", type_="m0", operator=models.NewThresholdRuleOperator(">"), threshold=25.0))
            assert isinstance(rule, models.AlertRule) and rule.id > 0
            assert delete_alert_rule.sync_detailed(rule.id, client=client).status_code == 204
            missing = delete_alert_rule.sync(rule.id, client=client)
            assert isinstance(missing, models.Error) and missing.error == "alert_rule_not_found"
            started = start_ota_update.sync("dev-001", client=client, body=models.NewOtaUpdate(
                version="2.0.0", url="https://firmware.invalid/2.0.0.bin", sha256=SHA))
            assert isinstance(started, models.OtaStarted)
            state = list_ota_updates.sync("dev-001", client=client)
            assert isinstance(state, models.OtaState) and isinstance(state.current, models.OtaUpdate)
            assert state.current.cmd_id == started.cmd_id and state.current.version == "2.0.0"
    finally:
        sys.path.remove(str(tmp_path / "client"))
        for name in [name for name in sys.modules if name.startswith("iotenant_api_client")]:
            del sys.modules[name]
