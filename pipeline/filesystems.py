"""fsspec filesystems with the storage libraries' own retries reduced to one attempt, so that `storage.with_retries`
is the only retry loop (s3fs x botocore x ours made a dead store take minutes to report), and with timeouts short
enough to notice a store that does not answer. Users' storage options always win over these defaults.

- s3:// (s3fs + botocore): s3fs `retries` 1; botocore one attempt, connect timeout 5 s, read timeout 20 s;
- gs:// (gcsfs): requests tried once; the Storage Control API probe of newer gcsfs gives up after 5 s;
- az:// abfs:// (adlfs + Azure SDK): connection / read timeouts 5 s / 20 s; the SDK's own retries off.
"""

from __future__ import annotations

import functools

import fsspec

S3_CLIENT_CONFIG = {  # botocore: one attempt per call (we retry), and timeouts short enough to notice a dead store
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"total_max_attempts": 1, "mode": "standard"},
}
S3_ATTEMPTS = 1  # s3fs's own retry loop, likewise
GCS_PROTOCOLS = ("gs", "gcs")
GCS_CONTROL_RETRY_S = 5  # gcsfs's bucket-type probe (Storage Control API, gRPC) gives up after this
AZURE_PROTOCOLS = ("az", "abfs", "abfss")
AZURE_TIMEOUTS = {"connection_timeout": 5, "read_timeout": 20}  # adlfs's own options; the SDK retries are set below


def library_options(protocol: str, options: dict) -> dict:
    """The user's storage options with this module's defaults added where the user set nothing."""
    if protocol in ("s3", "s3a"):
        return {**options, "config_kwargs": {**S3_CLIENT_CONFIG, **options.get("config_kwargs", {})}}
    if protocol in AZURE_PROTOCOLS:
        return {**AZURE_TIMEOUTS, **options}
    return options


def open_filesystem(protocol: str, options: dict) -> fsspec.AbstractFileSystem:
    """fsspec.filesystem(protocol, **options), with the storage library's own retries reduced to one attempt, so
    that `with_retries` is the only retry loop (s3fs x botocore x ours made a dead store take minutes to report)."""
    if protocol in GCS_PROTOCOLS:
        cls = _one_attempt_gcs()
        if hasattr(cls, "_get_bucket_type"):  # gcsfs >= 2025.10 asks the Storage Control API first, retrying for 60 s
            options = {"retry_timeout": GCS_CONTROL_RETRY_S, **options}
        return cls(**options)
    fs = fsspec.filesystem(protocol, **options)
    if protocol in ("s3", "s3a"):
        fs.retries = S3_ATTEMPTS
    elif protocol in AZURE_PROTOCOLS:
        policy = getattr(getattr(getattr(fs, "service_client", None), "_config", None), "retry_policy", None)
        for name in ("total_retries", "connect_retries", "read_retries", "status_retries"):
            if hasattr(policy, name):  # the Azure SDK's default waits 15 s, 45 s, ... between its own attempts
                setattr(policy, name, 0)
    return fs


@functools.lru_cache(maxsize=1)
def _one_attempt_gcs() -> type:
    """gcsfs's GCSFileSystem whose requests are tried once (gcsfs retries 6 times with up to 32 s between).
    Built on first use: gcsfs is imported only by those who use gs://."""
    import gcsfs
    from gcsfs.retry import retry_request

    class OneAttemptGCSFileSystem(gcsfs.GCSFileSystem):
        _request = retry_request(retries=1)(gcsfs.GCSFileSystem._request.__wrapped__)

    return OneAttemptGCSFileSystem
