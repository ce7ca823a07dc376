"""Form refusals as the API words them, beside the API's field names."""

from __future__ import annotations

from coffeeping_gateway.console.forms import FormErrors, field_label
from coffeeping_gateway.problems import Problem


def test_each_field_keeps_its_first_reason_and_a_problem_without_fields_its_detail():
    problem = Problem(422, "the request has invalid fields", errors=[
        {"field": "body", "message": "is required"}, {"field": "body", "message": "too long"},
        {"field": "follow_ups[1].delay", "message": "must be a duration"}])
    errors = FormErrors.of(problem)
    assert errors == {"body": "is required", "follow_ups[1].delay": "must be a duration"}
    assert errors.under("follow_ups[1]") == {"follow_ups[1].delay": "must be a duration"}
    assert errors.under("follow_ups[10]") == {}
    assert FormErrors.of(Problem(409, "already sent")) == {"": "already sent"}


def test_field_names_read_as_the_form_calls_them():
    assert field_label("follow_ups[0].body") == "Follow-up 1"
    assert field_label("follow_ups[1].delay") == "Follow-up 2, wait"
    assert field_label("send_window.start") == "Send window start"
    assert field_label("body") == "First email"
