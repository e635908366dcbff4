"""Scene keys -> names that are safe as one file or folder name.

A scene key comes from a dataset (index.json, the chunk's `key`), and a dataset can come from anywhere: a key
such as `/etc/x`, `../../x`, `a/b`, `CON` or one with a NUL byte must never decide where test mode writes. Keys
that are already plain names are used as they are (the original's file layout); every other key is mapped to
`<readable part>~<16 hex digits of its SHA-256>`. `~` never occurs in a kept key, so a mapped name never equals
a kept one, and two different keys never share a name (up to a 64-bit hash collision).
"""

import hashlib
import re

# A kept key: starts with a letter or digit, then letters, digits, '.', '_', '-'; at most MAX_NAME_LENGTH.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 120  # leaves room for suffixes such as `_frame_123_456.mp4` under the usual 255-byte limit
# Device names Windows reserves in any folder, with or without an extension (`CON`, `nul.txt`, `COM1.png`).
WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)
MAPPED_MARK = "~"


def is_plain_name(key: str) -> bool:
    """Whether `key` is used as a file name unchanged (see the module docstring)."""
    return (isinstance(key, str) and len(key) <= MAX_NAME_LENGTH and PLAIN_NAME.fullmatch(key) is not None
            and WINDOWS_RESERVED.fullmatch(key) is None and not key.endswith("."))


def scene_file_name(key: str) -> str:
    """The key itself when it is a plain name, else `<readable part>~<hash>`: one path component that stays
    inside whatever folder it is joined to, on Linux, macOS and Windows."""
    if is_plain_name(key):
        return key
    digest = hashlib.sha256(str(key).encode("utf-8", errors="surrogatepass")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._-")[:40]
    return f"{readable or 'scene'}{MAPPED_MARK}{digest}"
