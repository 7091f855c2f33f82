"""Credentials and SigV4 signatures for ``s3://`` tiers, from botocore (the reference
implementation; no signer of our own).

Credentials follow botocore's standard chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
(and ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` with ~/.aws, web identity
(``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``: Kubernetes service accounts), container
and instance credentials; refreshable ones are refreshed before they expire. None found:
the tier is read anonymously. Keys never leave this module in a message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("isaacfs.upstream")


class Signer:
    """Adds SigV4 headers to a request; ``anonymous`` when no credentials were found."""

    def __init__(self, region: str, profile: str | None = None) -> None:
        from botocore.session import Session

        self.region = region
        session = Session(profile=profile) if profile else Session()
        try:
            self._credentials = session.get_credentials()
        except Exception as exc:  # a profile that does not exist, an unreadable ~/.aws file
            raise ValueError(f"AWS credentials could not be loaded: {type(exc).__name__}: {exc}") from None
        self.method = getattr(self._credentials, "method", "") if self._credentials is not None else ""

    @property
    def anonymous(self) -> bool:
        return self._credentials is None

    @property
    def described(self) -> str:
        """Where the credentials came from, never what they are (for status and logs)."""
        if self._credentials is None:
            return "anonymous"
        return f"signed (SigV4, credentials from {self.method or 'the AWS chain'})"

    def headers(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None) -> dict[str, str]:
        """``headers`` with the signature added (a copy); unchanged when anonymous. Thread-safe."""
        if self._credentials is None:
            return dict(headers)
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        return dict(request.headers.items())
