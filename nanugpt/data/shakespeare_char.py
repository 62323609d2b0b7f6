"""tinyshakespeare (1.1 MB of Shakespeare), downloaded once from its canonical URL and verified."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from nanugpt.data.source import TextSource
from nanugpt.errors import ConfigError, MissingInputError, UnavailableInputError, check_value
from nanugpt.utils import atomic_write_bytes

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TinyShakespeare(TextSource):
    name = "shakespeare"

    def __init__(
        self,
        cache_dir: str,
        local_path: str | None,
        val_fraction: float,
        shard_tokens: int | None,
        num_proc: int | None,
        url: str = URL,
        sha256: str = SHA256,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(val_fraction, shard_tokens, num_proc)
        check_value(
            "data.cache_dir", cache_dir, str, fix="The download is kept there, e.g. data.cache_dir=data/downloads."
        )
        check_value("data.local_path", local_path, str, null="download it", fix="E.g. data.local_path=input.txt.")
        check_value("data.timeout_s", timeout_s, float, gt=0)
        self.cache_path = Path(cache_dir).expanduser() / "tinyshakespeare.txt"
        self.local_path = Path(local_path).expanduser() if local_path else None
        if self.local_path is not None and not self.local_path.is_file():
            raise MissingInputError(
                f"data.local_path={self.local_path} does not exist; pass the path of a local "
                "tinyshakespeare.txt, or drop data.local_path to download it."
            )
        self.url, self.sha256, self.timeout_s = url, sha256, timeout_s

    def _checked(self, data: bytes, origin: str) -> bytes:
        digest = sha256_of(data)
        if digest != self.sha256:
            raise ConfigError(
                f"{origin} has sha256 {digest}, not the expected {self.sha256} of tinyshakespeare "
                f"({len(data):,} bytes; the real file has 1,115,394). Pass the canonical file with "
                "data.local_path=..., or train on your own text with data=text data.path=..."
            )
        return data

    def download(self) -> bytes:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                data = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise UnavailableInputError(
                f"Could not download tinyshakespeare from {self.url} ({err}). If this machine is "
                "offline, pass a local copy: data.local_path=/path/to/tinyshakespeare.txt (it is "
                f"checked against sha256 {self.sha256}), or copy it to {self.cache_path}."
            ) from err
        data = self._checked(data, self.url)
        atomic_write_bytes(self.cache_path, data)
        return data

    def read_text(self) -> str:
        if self.local_path is not None:
            data = self._checked(self.local_path.read_bytes(), f"data.local_path={self.local_path}")
        elif self.cache_path.is_file():
            data = self._checked(self.cache_path.read_bytes(), f"the cached copy {self.cache_path}")
        else:
            data = self.download()
        return data.decode("utf-8")
