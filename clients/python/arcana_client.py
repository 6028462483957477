#!/usr/bin/env python3
"""Arcana Cloud from Python: a gRPC client on modules generated from the buf module in proto/.

It shares no code with the server: the stubs come from protoc (clients/python/generate.sh), the
transport is grpcio. Against a running server it registers a new user, logs in, reads itself,
lists users with an administrator's token, and sends an invalid registration to read the
google.rpc.BadRequest that explains it. It prints one JSON document with what it saw.

    clients/python/generate.sh /tmp/arcana-py
    PYTHONPATH=/tmp/arcana-py python3 clients/python/arcana_client.py 127.0.0.1:3000 \\
        --username ada --email ada@example.com --password 'Sturdy-Passw0rd!' \\
        --admin-username root_admin --admin-password '…'

Messages are printed as protobuf JSON (camelCase names, enum names such as USER_ROLE_USER).
"""

import argparse
import json
import sys

import grpc
from google.protobuf import json_format

from arcana.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from arcana.user.v1 import user_service_pb2, user_service_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

# Every call gets a deadline: a client that waits forever on a stalled server is a bug.
TIMEOUT_SECONDS = 10

# Wrong in every field, so the BadRequest lists several violations.
INVALID_REGISTRATION = {"username": "a!", "email": "not-an-e-mail", "password": "short"}


def as_json(message):
    """A message as protobuf JSON, the same shape Connect's JSON protocol uses."""
    return json_format.MessageToDict(message)


def bearer(token):
    return [("authorization", f"Bearer {token}")]


def bad_request_of(error):
    """The field violations of a failed call, from the standard `grpc-status-details-bin` trailer.

    The trailer holds a google.rpc.Status whose details are `Any`s; a validation error carries a
    google.rpc.BadRequest among them. Returns None when the call carried none.
    """
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                return {
                    "statusCode": status.code,
                    "fieldViolations": [
                        {"field": violation.field, "description": violation.description}
                        for violation in bad_request.field_violations
                    ],
                }
    return None


def run(target, args):
    with grpc.insecure_channel(target) as channel:
        auth = auth_service_pb2_grpc.AuthServiceStub(channel)
        users = user_service_pb2_grpc.UserServiceStub(channel)

        registered = auth.Register(
            auth_service_pb2.RegisterRequest(username=args.username, email=args.email, password=args.password),
            timeout=TIMEOUT_SECONDS,
        )
        login = auth.Login(
            auth_service_pb2.LoginRequest(username_or_email=args.username, password=args.password),
            timeout=TIMEOUT_SECONDS,
        )
        me = auth.GetCurrentUser(
            auth_service_pb2.GetCurrentUserRequest(),
            metadata=bearer(login.tokens.access_token),
            timeout=TIMEOUT_SECONDS,
        )
        admin = auth.Login(
            auth_service_pb2.LoginRequest(username_or_email=args.admin_username, password=args.admin_password),
            timeout=TIMEOUT_SECONDS,
        )
        page = users.ListUsers(
            user_service_pb2.ListUsersRequest(per_page=100),
            metadata=bearer(admin.tokens.access_token),
            timeout=TIMEOUT_SECONDS,
        )

        try:
            auth.Register(auth_service_pb2.RegisterRequest(**INVALID_REGISTRATION), timeout=TIMEOUT_SECONDS)
            invalid = {"request": INVALID_REGISTRATION, "error": None}
        except grpc.RpcError as error:
            invalid = {
                "request": INVALID_REGISTRATION,
                "code": error.code().name,
                "message": error.details(),
                "badRequest": bad_request_of(error),
            }

    return {
        "register": {"user": as_json(registered.user), "tokenType": registered.tokens.token_type},
        "login": {"user": as_json(login.user), "expiresIn": login.tokens.expires_in},
        "getCurrentUser": as_json(me),
        "listUsers": as_json(page),
        "invalidRegister": invalid,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of the server's gRPC endpoint (cleartext HTTP/2)")
    parser.add_argument("--username", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--admin-username", required=True, help="an ADMIN account, for ListUsers")
    parser.add_argument("--admin-password", required=True)
    args = parser.parse_args()
    try:
        result = run(args.target, args)
    except grpc.RpcError as error:
        # An unexpected failure: name the code and message, which is what a caller needs.
        print(json.dumps({"error": {"code": error.code().name, "message": error.details()}}), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
