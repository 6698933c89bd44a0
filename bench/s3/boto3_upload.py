#!/usr/bin/env python3
"""Uploads files with boto3's managed multipart upload (upload_file, TransferConfig
max_concurrency=8, 8 MiB parts: the same part size and parallelism as modelcache's default).

    boto3_upload.py ENDPOINT BUCKET FILE...     (credentials from AWS_* variables)
"""
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def main():
    endpoint, bucket, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    kwargs = {"s3": {"addressing_style": "path"}}
    try:
        # botocore >= 1.36 adds CRC32 trailers by default, which radosgw 16 does not know.
        cfg = Config(request_checksum_calculation="when_required",
                     response_checksum_validation="when_required", **kwargs)
    except TypeError:
        cfg = Config(**kwargs)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=cfg)
    mib = 1 << 20
    tc = TransferConfig(multipart_threshold=16 * mib, multipart_chunksize=8 * mib,
                        max_concurrency=8, use_threads=True)
    start = time.monotonic()
    total = 0
    for f in files:
        s3.upload_file(f, bucket, os.path.basename(f), Config=tc)
        total += os.path.getsize(f)
    print("total %d bytes in %.2f s" % (total, time.monotonic() - start))


if __name__ == "__main__":
    main()
