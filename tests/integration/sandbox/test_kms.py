"""The Cloud KMS stand-in answers the real google-cloud-kms client over plaintext gRPC."""

from __future__ import annotations

import grpc
import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

from coffeeping_sandbox.kms import crc32c

KEY = "projects/coffeeping-dev/locations/europe-west1/keyRings/vault/cryptoKeys/grant-keys"
OTHER_KEY = "projects/coffeeping-dev/locations/europe-west1/keyRings/vault/cryptoKeys/other"


@pytest.fixture(scope="module")
def channel(sandbox_session):
    ch = grpc.insecure_channel(sandbox_session.kms_addr)
    yield ch
    ch.close()


@pytest.fixture
def kms(sandbox, channel) -> kms_v1.KeyManagementServiceClient:
    return kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))


def encrypt(kms, plaintext=b"data key", aad=b"grant:42", name=KEY, **extra):
    return kms.encrypt(
        request={
            "name": name,
            "plaintext": plaintext,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": crc32c(plaintext),
            "additional_authenticated_data_crc32c": crc32c(aad),
            **extra,
        },
        retry=None,
        timeout=5,
    )


def decrypt(kms, ciphertext, aad=b"grant:42", name=KEY, **extra):
    return kms.decrypt(
        request={
            "name": name,
            "ciphertext": ciphertext,
            "additional_authenticated_data": aad,
            "ciphertext_crc32c": crc32c(ciphertext),
            "additional_authenticated_data_crc32c": crc32c(aad),
            **extra,
        },
        retry=None,
        timeout=5,
    )


def test_round_trip_with_aad_and_every_integrity_field_as_google_documents(kms):
    resp = encrypt(kms, b"secret")
    assert resp.name == KEY + "/cryptoKeyVersions/1"
    assert resp.verified_plaintext_crc32c and resp.verified_additional_authenticated_data_crc32c
    assert resp.ciphertext_crc32c == crc32c(resp.ciphertext)
    assert b"secret" not in resp.ciphertext
    assert resp.protection_level == kms_v1.ProtectionLevel.SOFTWARE
    out = decrypt(kms, resp.ciphertext)
    assert out.plaintext == b"secret"
    assert out.plaintext_crc32c == crc32c(b"secret")
    assert out.used_primary


def test_verified_flags_are_false_when_no_checksum_is_sent(kms):
    resp = kms.encrypt(request={"name": KEY, "plaintext": b"x"}, retry=None, timeout=5)
    assert not resp.verified_plaintext_crc32c and not resp.verified_additional_authenticated_data_crc32c
    assert "ciphertext_crc32c" in resp


def test_same_plaintext_encrypts_to_different_ciphertexts(kms):
    assert encrypt(kms, b"same").ciphertext != encrypt(kms, b"same").ciphertext


def test_wrong_aad_fails_to_decrypt(kms):
    ct = encrypt(kms, b"secret", aad=b"grant:42").ciphertext
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, ct, aad=b"grant:43")
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, ct, aad=b"")


def test_flipped_ciphertext_byte_fails_closed(kms):
    ct = bytearray(encrypt(kms).ciphertext)
    ct[-1] ^= 1
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, bytes(ct))
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, b"garbage")


def test_ciphertext_of_another_key_does_not_decrypt(kms):
    ct = encrypt(kms, name=OTHER_KEY).ciphertext
    encrypt(kms)  # make KEY exist
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, ct)


@pytest.mark.parametrize(
    "field",
    ["plaintext_crc32c", "additional_authenticated_data_crc32c"],
)
def test_encrypt_request_checksum_mismatch_is_invalid_argument(kms, field):
    with pytest.raises(gexc.InvalidArgument, match=field):
        encrypt(kms, **{field: 12345})


@pytest.mark.parametrize("field", ["ciphertext_crc32c", "additional_authenticated_data_crc32c"])
def test_decrypt_request_checksum_mismatch_is_invalid_argument(kms, field):
    ct = encrypt(kms).ciphertext
    with pytest.raises(gexc.InvalidArgument, match=field):
        decrypt(kms, ct, **{field: crc32c(ct) ^ 1})


def test_rotation_keeps_old_ciphertexts_decryptable(sandbox, kms):
    old = encrypt(kms, b"before").ciphertext
    r = requests.post(sandbox.google_url + "/_sandbox/kms/rotate", json={"key_name": KEY}, timeout=5)
    assert r.json() == {"version": KEY + "/cryptoKeyVersions/2"}
    new = encrypt(kms, b"after")
    assert new.name == KEY + "/cryptoKeyVersions/2"
    before = decrypt(kms, old)
    assert before.plaintext == b"before" and not before.used_primary
    assert decrypt(kms, new.ciphertext).used_primary


def test_rotation_through_the_kms_api(kms):
    encrypt(kms)
    version = kms.create_crypto_key_version(request={"parent": KEY, "crypto_key_version": {}}, retry=None)
    assert version.name == KEY + "/cryptoKeyVersions/2"
    assert encrypt(kms).name.endswith("/1")  # a new version is not primary until promoted
    key = kms.update_crypto_key_primary_version(
        request={"name": KEY, "crypto_key_version_id": "2"}, retry=None
    )
    assert key.primary.name == version.name
    assert encrypt(kms).name.endswith("/2")
    got = kms.get_crypto_key(request={"name": KEY}, retry=None)
    assert got.primary.name == version.name
    assert got.purpose == kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT


def test_encrypt_with_a_named_version_uses_that_version(kms):
    encrypt(kms)
    kms.create_crypto_key_version(request={"parent": KEY, "crypto_key_version": {}}, retry=None)
    assert encrypt(kms, name=KEY + "/cryptoKeyVersions/2").name == KEY + "/cryptoKeyVersions/2"


def test_disabled_version_refuses_with_failed_precondition(sandbox, kms):
    ct = encrypt(kms).ciphertext
    sandbox.kms.set_version_state(KEY, 1, "DISABLED")
    with pytest.raises(gexc.FailedPrecondition):
        decrypt(kms, ct)
    with pytest.raises(gexc.FailedPrecondition):
        encrypt(kms)


def test_unknown_key_is_not_found(sandbox, kms):
    with pytest.raises(gexc.NotFound):
        decrypt(kms, b"CPK1" + bytes(40))
    requests.post(sandbox.google_url + "/_sandbox/kms/auto-create", json={"enabled": False}, timeout=5)
    with pytest.raises(gexc.NotFound):
        encrypt(kms)
    with pytest.raises(gexc.NotFound):
        kms.get_crypto_key(request={"name": KEY}, retry=None)
    r = requests.post(sandbox.google_url + "/_sandbox/kms/keys", json={"key_name": KEY}, timeout=5)
    assert r.json()["primary"] == KEY + "/cryptoKeyVersions/1"
    assert encrypt(kms).name.endswith("/1")


def test_malformed_names_are_invalid_argument(kms):
    with pytest.raises(gexc.InvalidArgument):
        encrypt(kms, name="projects/p/keys/k")
    with pytest.raises(gexc.InvalidArgument):
        decrypt(kms, b"x" * 40, name=KEY + "/cryptoKeyVersions/1")


def test_oversized_plaintext_is_invalid_argument(kms):
    with pytest.raises(gexc.InvalidArgument):
        encrypt(kms, b"x" * (64 * 1024 + 1))


def test_create_crypto_key_then_already_exists(kms):
    parent = "projects/coffeeping-dev/locations/global/keyRings/r"
    key = kms.create_crypto_key(
        request={"parent": parent, "crypto_key_id": "k1", "crypto_key": {"purpose": "ENCRYPT_DECRYPT"}},
        retry=None,
    )
    assert key.name == parent + "/cryptoKeys/k1" and key.primary.name.endswith("/cryptoKeyVersions/1")
    with pytest.raises(gexc.AlreadyExists):
        kms.create_crypto_key(
            request={"parent": parent, "crypto_key_id": "k1", "crypto_key": {"purpose": "ENCRYPT_DECRYPT"}},
            retry=None,
        )


def test_injected_faults_fire_n_times_then_stop(sandbox, kms):
    r = requests.post(
        sandbox.google_url + "/_sandbox/faults",
        json={"method": "kms.Encrypt", "status": 503, "count": 2},
        timeout=5,
    )
    assert r.status_code == 200
    for _ in range(2):
        with pytest.raises(gexc.ServiceUnavailable):
            encrypt(kms)
    assert encrypt(kms).name.endswith("/1")
    sandbox.control.arm("kms.Decrypt", "PERMISSION_DENIED")
    with pytest.raises(gexc.PermissionDenied):
        decrypt(kms, b"x")
    assert sandbox.kms.counts() == {"Encrypt": 3, "Decrypt": 1}
    assert requests.get(sandbox.google_url + "/_sandbox/counters", timeout=5).json()["kms"]["Encrypt"] == 3


def test_hang_fault_outlasts_the_client_deadline(sandbox, kms):
    sandbox.control.arm("kms.Encrypt", "hang", hang_seconds=0.5)
    with pytest.raises(gexc.DeadlineExceeded):
        kms.encrypt(request={"name": KEY, "plaintext": b"x"}, retry=None, timeout=0.2)
