"""The mailer's refusals, as gRPC status codes with ``google.rpc`` error details.

Every refusal is raised as an :class:`ApiError` and answered by the servicer with
``context.abort_with_status`` (grpcio-status). The details follow Google's API Improvement Proposals
(AIP-193): ``BadRequest`` field violations for invalid input, ``ResourceInfo`` naming the resource that
is missing or that already exists, and ``ErrorInfo`` with a machine-readable reason. Which HTTP status
a caller sees is the gateway's business, not the mailer's.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "mailer.coffeeping"

# ErrorInfo reasons (UPPER_SNAKE_CASE, as AIP-193 asks).
EMAIL_TAKEN = "CONTACT_EMAIL_EXISTS"
WRONG_STATE = "SEQUENCE_STATE"
ACCOUNT_DELETED = "ACCOUNT_DELETED"


class ApiError(Exception):
    """A refusal: a status code, a message a person can read, and structured details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Iterable[Message] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def status(self) -> grpc.Status:
        packed = []
        for detail in self.details:
            item = any_pb2.Any()
            item.Pack(detail)
            packed.append(item)
        code = getattr(code_pb2, self.code.name)
        return rpc_status.to_status(status_pb2.Status(code=code, message=self.message, details=packed))


class Invalid(ApiError):
    """INVALID_ARGUMENT with one field violation per bad field (``{"field": ..., "message": ...}``)."""

    def __init__(self, errors: list[dict[str, str]], detail: str = "the request has invalid fields") -> None:
        violations = [error_details_pb2.BadRequest.FieldViolation(field=e["field"], description=e["message"])
                      for e in errors]
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, detail,
                         [error_details_pb2.BadRequest(field_violations=violations)])


def not_found(resource_type: str, name: str = "") -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"no such {resource_type}",
                    [error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=name)])


def already_exists(resource_type: str, existing_id: str, detail: str) -> ApiError:
    """ALREADY_EXISTS naming the resource that is already there (``existing_id`` in the metadata)."""
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, detail, [
        error_details_pb2.ErrorInfo(reason=EMAIL_TAKEN, domain=DOMAIN, metadata={"existing_id": existing_id}),
        error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=existing_id),
    ])


def wrong_state(detail: str, state: str) -> ApiError:
    """FAILED_PRECONDITION: the resource is in a state where this is not possible."""
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, detail, [
        error_details_pb2.ErrorInfo(reason=WRONG_STATE, domain=DOMAIN, metadata={"state": state})])


def account_deleted() -> ApiError:
    # The message is the same word the accounts service and the vault answer for a deleted account.
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, "account_deleted", [
        error_details_pb2.ErrorInfo(reason=ACCOUNT_DELETED, domain=DOMAIN)])
