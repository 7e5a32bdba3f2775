"""Upload one file to S3 (the pre-migration backup's second step).

Runs inside the migration Job's ``s3-upload`` init container on a stock Python image, so it uses
the standard library only: requests are signed with AWS Signature Version 4. Files up to one part
go up in a single PUT; larger ones as a multipart upload (aborted on failure, so no orphaned parts
are billed). After the upload the object's size is read back and compared with the file's.

Usage::

    python s3_upload.py --file /backup/portal.dump --bucket B
        --key "ns/pre-migration-{timestamp}.dump" [--region us-east-1]
        [--endpoint https://minio.example:9000] [--part-size BYTES]

Credentials come from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, when set,
``AWS_SESSION_TOKEN``. ``{timestamp}`` in the key becomes the UTC time of the upload.
Exit status: 0 uploaded and verified, 1 the upload failed (one line on stderr says why), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_PART_SIZE = 32 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
"""S3 refuses parts below 5 MiB (except the last)."""
MAX_PARTS = 10_000
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
RETRIES = 3


class UploadError(RuntimeError):
    """The upload failed; the message says which request and what S3 answered."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        access = environ.get("AWS_ACCESS_KEY_ID", "")
        secret = environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise UploadError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must both be set")
        return cls(access, secret, environ.get("AWS_SESSION_TOKEN") or None)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class Bucket:
    """Signed requests against one bucket."""

    name: str
    region: str
    credentials: Credentials
    endpoint: str | None = None
    """Custom endpoint (path-style addressing); ``None`` is AWS (virtual-hosted style)."""

    def url(self, key: str, query: Mapping[str, str] | None = None) -> str:
        path = urllib.parse.quote(key, safe="/-_.~")
        if self.endpoint:
            base = f"{self.endpoint.rstrip('/')}/{self.name}/{path}"
        else:
            base = f"https://{self.name}.s3.{self.region}.amazonaws.com/{path}"
        if query:
            base += "?" + _canonical_query(query)
        return base

    def sign(
        self, method: str, url: str, payload_sha256: str, now: dt.datetime | None = None
    ) -> dict[str, str]:
        """The headers that authenticate ``method url`` (AWS Signature Version 4)."""
        now = now or dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        parts = urllib.parse.urlsplit(url)
        headers = {
            "host": parts.netloc,
            "x-amz-content-sha256": payload_sha256,
            "x-amz-date": amz_date,
        }
        if self.credentials.token:
            headers["x-amz-security-token"] = self.credentials.token
        names = sorted(headers)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        canonical = "\n".join(
            [
                method,
                parts.path or "/",
                _canonical_query(dict(query)),
                "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                ";".join(names),
                payload_sha256,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        key = _hmac(f"AWS4{self.credentials.secret_key}".encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.credentials.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        del headers["host"]  # urllib sets it from the URL
        return headers

    def request(
        self,
        method: str,
        key: str,
        body: bytes = b"",
        query: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send a signed request; retry connection errors and 5xx answers."""
        url = self.url(key, query)
        digest = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        last = ""
        for attempt in range(RETRIES):
            req = urllib.request.Request(
                url, data=body or None, method=method, headers=self.sign(method, url, digest)
            )
            if body:
                req.add_header("Content-Length", str(len(body)))
            try:
                with urllib.request.urlopen(req, timeout=300) as resp:
                    return resp.status, dict(resp.headers), resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                last = f"HTTP {exc.code}: {_s3_message(detail)}"
                if exc.code < 500:
                    break
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.5 * 2**attempt)
        raise UploadError(f"{method} {url} failed: {last}")


def _canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query.items())
    )


def _s3_message(xml_text: str) -> str:
    """The ``<Message>`` of an S3 error document, or the text itself."""
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 - S3's own answer
    except ET.ParseError:
        return xml_text.strip()[:200] or "no detail"
    code = next((e.text for e in root.iter() if e.tag.endswith("Code")), None)
    message = next((e.text for e in root.iter() if e.tag.endswith("Message")), None)
    return " ".join(x for x in (code, message) if x) or xml_text.strip()[:200]


def _xml_value(xml_bytes: bytes, tag: str) -> str:
    root = ET.fromstring(xml_bytes)  # noqa: S314 - S3's own answer
    for element in root.iter():
        if element.tag.endswith(tag) and element.text:
            return element.text
    raise UploadError(f"S3 answer has no <{tag}>: {xml_bytes[:200]!r}")


def _print(text: str) -> None:
    print(text, flush=True)


def upload(
    bucket: Bucket,
    path: str,
    key: str,
    part_size: int = DEFAULT_PART_SIZE,
    say: Callable[[str], None] = _print,
) -> int:
    """Upload ``path`` to ``key`` and verify the stored size; returns the byte count."""
    size = os.path.getsize(path)
    if size == 0:
        raise UploadError(f"{path} is empty: refusing to store an empty backup")
    part_size = max(part_size, MIN_PART_SIZE, -(-size // MAX_PARTS))
    say(f"uploading {path} ({size} bytes) to s3://{bucket.name}/{key}")
    with open(path, "rb") as f:
        if size <= part_size:
            bucket.request("PUT", key, f.read())
        else:
            _multipart(bucket, f, key, size, part_size, say)
    _, headers, _ = bucket.request("HEAD", key)
    stored = int({k.lower(): v for k, v in headers.items()}.get("content-length", "-1"))
    if stored != size:
        raise UploadError(f"s3://{bucket.name}/{key} holds {stored} bytes, the file {size}")
    say(f"stored and verified s3://{bucket.name}/{key} ({size} bytes)")
    return size


def _multipart(
    bucket: Bucket, f: BinaryIO, key: str, size: int, part_size: int, say: Callable[[str], None]
) -> None:
    _, _, body = bucket.request("POST", key, query={"uploads": ""})
    upload_id = _xml_value(body, "UploadId")
    total = -(-size // part_size)
    etags: list[str] = []
    try:
        for number in range(1, total + 1):
            chunk = f.read(part_size)
            _, headers, _ = bucket.request(
                "PUT", key, chunk, query={"partNumber": str(number), "uploadId": upload_id}
            )
            etag = {k.lower(): v for k, v in headers.items()}.get("etag")
            if not etag:
                raise UploadError(f"S3 returned no ETag for part {number}")
            etags.append(etag)
            say(f"part {number}/{total} uploaded")
        parts = "".join(
            f"<Part><PartNumber>{i}</PartNumber><ETag>{etag}</ETag></Part>"
            for i, etag in enumerate(etags, start=1)
        )
        done = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        _, _, answer = bucket.request("POST", key, done, query={"uploadId": upload_id})
        if b"<Error>" in answer:
            raise UploadError(f"completing the upload failed: {_s3_message(answer.decode())}")
    except BaseException:
        try:
            bucket.request("DELETE", key, query={"uploadId": upload_id})
        except UploadError as exc:
            say(f"could not abort multipart upload {upload_id}: {exc}")
        raise


def object_key(template: str, now: dt.datetime | None = None) -> str:
    """``template`` with ``{timestamp}`` replaced by the UTC time (``20250101T120000Z``)."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return template.replace("{timestamp}", stamp)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="s3_upload.py", description="Upload a file to S3.")
    p.add_argument("--file", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--key", required=True, help="object key; {timestamp} becomes the UTC time")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--endpoint", default=None, help="custom S3 endpoint (path-style)")
    p.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE)
    args = p.parse_args(argv)
    try:
        credentials = Credentials.from_env(os.environ if environ is None else environ)
        bucket = Bucket(args.bucket, args.region, credentials, args.endpoint or None)
        upload(bucket, args.file, object_key(args.key), args.part_size)
    except (UploadError, OSError) as exc:
        print(f"s3_upload: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
