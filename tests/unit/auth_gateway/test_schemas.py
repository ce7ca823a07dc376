"""The public documents against the mailer's vocabulary and messages (no processes)."""

from __future__ import annotations

from typing import get_args

import pytest
from openapi_spec_validator import validate

from coffeeping.common.access_log import KINDS
from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping_gateway import schemas
from coffeeping_gateway.api import field_name, from_message, to_message
from coffeeping_gateway.openapi import document
from coffeeping_mailer import models


def test_the_access_kinds_are_the_access_logs():
    assert get_args(schemas.AccessKind) == KINDS


def test_the_states_and_stop_reasons_are_the_mailers():
    assert set(get_args(schemas.StopReason)) == set(models.STOP_REASONS)
    assert set(get_args(schemas.StepStatus)) == set(models.STEP_STATES)
    assert set(get_args(schemas.SequenceStatus)) == {"draft", "paused", *models.SEQUENCE_LIVE,
                                                     *models.SEQUENCE_TERMINAL}


@pytest.mark.parametrize("model, message", [
    (schemas.Contact, pb.Contact), (schemas.Sequence, pb.Sequence), (schemas.Step, pb.Step),
    (schemas.ImportResult, pb.ImportContactsResponse), (schemas.SequenceInput, pb.CreateSequenceRequest),
    (schemas.FollowUpInput, pb.FollowUp), (schemas.ContactInput, pb.Contact),
])
def test_each_document_names_only_fields_of_its_message(model, message):
    assert set(model.model_fields) <= set(message.DESCRIPTOR.fields_by_name)


def test_a_sequence_moves_between_document_and_message_without_loss():
    given = schemas.SequenceInput.model_validate_json(
        '{"contact_id": "c", "subject": "s", "body": "b", "business_days": true,'
        ' "follow_ups": [{"body": "f", "send_at": "2030-01-02T03:04:05+02:00"}],'
        ' "send_window": {"start": "09:00", "end": "17:00"}}')
    message = to_message(given, pb.CreateSequenceRequest())
    assert message.follow_ups[0].send_at.ToJsonString() == "2030-01-02T01:04:05Z"
    assert message.send_window.end == "17:00" and message.business_days


def test_unset_optional_fields_are_null_and_zero_values_are_kept():
    step = from_message(schemas.Step, pb.Step(id="s", position=0, kind="first", body="b", status="scheduled"))
    assert step.position == 0 and step.draft_id is None and step.attempts == 0


def test_field_names_read_like_the_request():
    assert field_name(("follow_ups", 0, "delay")) == "follow_ups[0].delay"
    assert field_name(("email",)) == "email"


def test_the_openapi_document_is_valid():
    validate(document())
