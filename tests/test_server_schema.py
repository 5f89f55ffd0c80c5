"""A bounded property-based run of schemathesis against a live `instar serve` on 127.0.0.1: requests generated
from /openapi.json, each answer checked for a 5xx and against the schema (status codes, content types, response
bodies, the Allow header of a 405). A few hundred requests, well under a minute."""
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (allow_header_conformance, content_type_conformance,
                                               response_schema_conformance, status_code_conformance)

from serving import FAST, build_index, start_server

EXAMPLES = 40   # per operation (7 operations): 280 requests
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          allow_header_conformance]


@pytest.mark.slow
def test_live_server_conforms_to_its_schema(tmp_path, photos):
    index = build_index(tmp_path / "s.index", photos, "rootsift-vlad", FAST)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server = start_server(index, tmp_path, token="t0ken", extra=["--allow-folder", str(allowed), "--max-k", "20"])
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 7, [op.label for op in operations]
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def conforms(case):
                case.call_and_validate(checks=CHECKS)

            conforms()
    finally:
        server.stop()
