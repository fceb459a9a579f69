"""Server interceptors: malformed messages and the TCP token, on every service."""
from __future__ import annotations

import hmac

import grpc

from ..errors import InvalidInput


class _Undecodable:
    """Stands in for a request message that is not valid protobuf for its method."""

    def __init__(self, error: Exception):
        self.error = error


class DecodeGuard(grpc.ServerInterceptor):
    """grpc answers a request message that does not parse with INTERNAL
    ("Exception deserializing request!") and logs a traceback; bytes a client
    got wrong are INVALID_ARGUMENT, on every service of the daemon."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, details.method

        def safe(data):
            try:
                return parse(data)
            except Exception as e:  # DecodeError, invalid UTF-8 in a string field, ...
                return _Undecodable(e)

        def refuse(context, bad):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{method}: request message is not valid protobuf ({bad.error})")

        def checked(requests):
            for r in requests:
                if isinstance(r, _Undecodable):
                    raise InvalidInput(f"{method}: request message is not valid protobuf ({r.error})")
                yield r

        if not handler.request_streaming:
            name = "unary_stream" if handler.response_streaming else "unary_unary"
            inner = getattr(handler, name)
            if handler.response_streaming:
                def behaviour(request, context):
                    if isinstance(request, _Undecodable):
                        refuse(context, request)
                    yield from inner(request, context)
            else:
                def behaviour(request, context):
                    if isinstance(request, _Undecodable):
                        refuse(context, request)
                    return inner(request, context)
        else:
            name = "stream_stream" if handler.response_streaming else "stream_unary"
            inner = getattr(handler, name)
            if handler.response_streaming:
                def behaviour(requests, context):
                    try:
                        yield from inner(checked(requests), context)
                    except InvalidInput as e:  # services that let it escape (reflection)
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            else:
                def behaviour(requests, context):
                    try:
                        return inner(checked(requests), context)
                    except InvalidInput as e:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return handler._replace(request_deserializer=safe, **{name: behaviour})


class TokenInterceptor(grpc.ServerInterceptor):
    """Every call on a TCP listener with a token must carry
    `authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(details)
        return self._deny_stream if details.method.endswith("/Matte") else self._deny
