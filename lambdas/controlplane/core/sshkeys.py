"""SSH keys (pure): the team's login key and each job's pinned host key.

- The team key (Ed25519) is generated once per team; its private half lives only in Secrets Manager, its public
  half is imported as the EC2 key pair and installed by the job wrapper for the relay's login.
- A job's host key is *derived* from a per-team secret seed and the job id (HKDF-SHA256 → Ed25519 seed). Deriving
  instead of generating means a retried Launch renders byte-identical user data (EC2's ClientToken idempotency
  needs identical parameters) and the relay can recompute the public half it must trust; nothing random has to be
  stored between steps.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair in OpenSSH formats. repr never shows the private half."""

    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public_openssh[:32]}…)"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_openssh)


def _pair(key: Ed25519PrivateKey, comment: str) -> KeyPair:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private_openssh=private, public_openssh=f"{public} {comment}".strip())


def generate(comment: str = "") -> KeyPair:
    return _pair(Ed25519PrivateKey.generate(), comment)


def new_seed() -> str:
    """A 256-bit secret (hex) from which a team's job host keys are derived."""
    return secrets.token_hex(32)


def derive_host_key(seed_hex: str, job_id: str) -> KeyPair:
    """The job's SSH host key: the same (seed, job id) always gives the same key, byte for byte."""
    material = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"ec2jobs-host-key-v1", info=job_id.encode()).derive(
        bytes.fromhex(seed_hex)
    )
    key = Ed25519PrivateKey.from_private_bytes(material)
    public_raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    comment = f"ec2jobs-host-{job_id}"
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(
        private_openssh=_deterministic_openssh_private(material, public_raw, comment),
        public_openssh=f"{public.decode()} {comment}",
    )


def _deterministic_openssh_private(seed: bytes, public: bytes, comment: str) -> str:
    """An unencrypted `openssh-key-v1` private key (PROTOCOL.key). Libraries fill its two "check" integers with
    random bytes, which would make every render differ; here they are derived from the key, so the file is a pure
    function of the key (OpenSSH only checks that the two are equal)."""

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    key_type = b"ssh-ed25519"
    check = hashlib.sha256(b"ec2jobs-checkint" + seed).digest()[:4]
    private = check + check + string(key_type) + string(public) + string(seed + public) + string(comment.encode())
    private += bytes(range(1, 1 + (-len(private) % 8)))  # padding 1, 2, 3... to the 8-byte block size
    blob = (
        b"openssh-key-v1\x00"
        + string(b"none")
        + string(b"none")
        + string(b"")
        + struct.pack(">I", 1)
        + string(string(key_type) + string(public))
        + string(private)
    )
    encoded = base64.b64encode(blob).decode()
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"


def key_blob(public_openssh: str) -> str:
    """The base64 key material of an OpenSSH public key line (type and comment dropped), for comparisons."""
    parts = public_openssh.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    return parts[1]


def fingerprint(public_openssh: str) -> str:
    """OpenSSH's SHA256 fingerprint, e.g. SHA256:abc... (what `ssh-keygen -lf` prints)."""
    digest = hashlib.sha256(base64.b64decode(key_blob(public_openssh))).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_public(public_openssh: str) -> Ed25519PublicKey:
    key = serialization.load_ssh_public_key(public_openssh.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("expected an ssh-ed25519 public key")
    return key
