"""moto's standalone S3 server on 127.0.0.1, as tests use an object store. (Plain Python, no
pytest.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sheldon.serving.server import moto_server

# Where no AWS profile or shared credentials file of this machine lies: none may supply keys to a test.
NO_AWS_FILE = str(Path(__file__).parent / "no-such-aws-file")
ANY_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    keys: dict[str, str]  # AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY it takes
    user: str | None  # the IAM user owning those keys, when it checks them

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use it: its endpoint, region and keys; no profile or shared file
        of this machine's may supply other credentials."""
        return self.keys | self.endpoint_env

    @property
    def endpoint_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": NO_AWS_FILE,
            "AWS_CONFIG_FILE": NO_AWS_FILE,
        }

    def client(self, service: str = "s3"):
        import boto3

        keys = {"aws_access_key_id": self.keys["AWS_ACCESS_KEY_ID"]}
        keys["aws_secret_access_key"] = self.keys["AWS_SECRET_ACCESS_KEY"]
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    def keys_in(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in listed.get("Contents", [])]

    def revoke_keys(self) -> None:
        """Delete the access key it took: every request signed with it is refused from now on."""
        self.client("iam").delete_access_key(UserName=self.user, AccessKeyId=self.keys["AWS_ACCESS_KEY_ID"])


@contextmanager
def moto_s3(*buckets: str, check_keys: bool = False) -> Iterator[ObjectStore]:
    """moto's S3 server on a free port with `buckets`. `check_keys`: it accepts only the keys of
    an IAM user it makes (moto checks signatures once its first unsigned actions are spent),
    so wrong and revoked credentials are refused as AWS refuses them."""
    unsigned = {"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if check_keys else {}  # user, key, policy
    with moto_server(unsigned) as endpoint:
        store = ObjectStore(endpoint, ANY_KEYS, None)
        if check_keys:
            iam = store.client("iam")
            iam.create_user(UserName="team")
            key = iam.create_access_key(UserName="team")["AccessKey"]
            allow_all = {"Effect": "Allow", "Action": "*", "Resource": "*"}
            policy = {"Version": "2012-10-17", "Statement": [allow_all]}
            iam.put_user_policy(UserName="team", PolicyName="all", PolicyDocument=json.dumps(policy))
            keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
            store = ObjectStore(endpoint, keys, "team")
        for bucket in buckets:
            store.client().create_bucket(Bucket=bucket)
        yield store
